"""A tiny, random, offline SmolVLM (Idefics3 architecture) with a locally built tokenizer and processor.

Nothing is downloaded: the tokenizer is a byte-level BPE trained with ``tokenizers`` on the given texts
(dataset captions and a built-in biomedical word list), wrapped in ``PreTrainedTokenizerFast`` with the
SmolVLM special tokens (``<image>``, ``<fake_token_around_image>``, ``<global-img>``, ``<row_i_col_j>``,
``<end_of_utterance>``) and SmolVLM's chat template. The image processor is an ``Idefics3ImageProcessor``
with small tiles. Everything is written with ``save_pretrained`` so callers load it back through
``AutoProcessor.from_pretrained`` / ``AutoModelForImageTextToText.from_pretrained`` - the same code path
as a real ``HuggingFaceTB/SmolVLM-*`` checkpoint (whose ``model_type`` is also ``idefics3``).
"""
from __future__ import annotations

import os
from collections.abc import Iterable

# SmolVLM-Instruct's chat template (content lists of {"type": "image"} / {"type": "text", "text": ...}).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
BASE_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_SEED_TEXT = ("Describe this figure. Which sentence of the article cites this figure? Which concepts does this "
              "figure show? User: Assistant: microscopy histology tomography radiograph MRI CT ultrasound western "
              "blot gel chart plot scatter bar cell tissue tumor protein gene expression patients mice control "
              "scale bar arrows panel (A) (B) (C) (D) mean SD p < 0.05 0123456789")

# tile 32 px, patch 8 px, pixel-shuffle 2 -> (32/8)^2 / 2^2 = 4 image tokens per tile
TINY_TILE = 32
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "image_size": TINY_TILE, "patch_size": 8}
TINY_TEXT = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 1024,
             "rms_norm_eps": 1e-5, "tie_word_embeddings": False}


def build_tokenizer(texts: Iterable[str] = (), vocab_size: int = 600):
    """Byte-level BPE trained on ``texts`` (+ a seed text) with SmolVLM's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BASE_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_SEED_TEXT, *texts], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   additional_special_tokens=IMAGE_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1_000_000   # answers are cut by the token-budget guard, not here
    return fast


def build_processor(texts: Iterable[str] = (), tile: int = TINY_TILE, max_tiles_edge: int = 2,
                    patch_size: int = TINY_VISION["patch_size"], scale_factor: int = 2):
    """An ``Idefics3Processor`` with small tiles: images are resized to ``tile * max_tiles_edge`` on the
    longest edge and split into ``tile``-px tiles (+ one global tile)."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    image_processor = Idefics3ImageProcessor(
        do_resize=True, size={"longest_edge": tile * max_tiles_edge}, max_image_size={"longest_edge": tile},
        do_image_splitting=True, do_rescale=True, do_normalize=True, do_pad=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    image_seq_len = (tile // patch_size) ** 2 // scale_factor ** 2
    return Idefics3Processor(image_processor=image_processor, tokenizer=build_tokenizer(texts),
                             image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer, scale_factor: int = 2):
    from transformers import Idefics3Config

    text = dict(TINY_TEXT, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return Idefics3Config(vision_config=dict(TINY_VISION), text_config=text, scale_factor=scale_factor,
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def save_tiny_model(out_dir: str | os.PathLike, texts: Iterable[str] = (), seed: int = 0) -> str:
    """Write a random tiny Idefics3 model + its processor to ``out_dir`` (loadable with the Auto classes)."""
    import torch
    from transformers import AutoModelForImageTextToText

    processor = build_processor(texts)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(tiny_config(processor.tokenizer))
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return os.fspath(out_dir)
