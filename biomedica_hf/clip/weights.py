"""Where a model's weights come from when the Hub cannot help: the one-line error saying what fixes it.

Shared by the CLIP loader (:mod:`biomedica_hf.clip.model`) and the image backbones
(:mod:`biomedica_hf.clip.backbones`): weights that are neither local nor cached while the Hub is offline or
unreachable raise :class:`~biomedica_hf.errors.MissingWeightsError` at once, not after a download client's retries.
"""
from __future__ import annotations

import logging
import os

from biomedica_hf.errors import MissingWeightsError, hub_offline, hub_reachable, is_local_path, unreachable

log = logging.getLogger(__name__)

BACKBONE_HINT = "pass --model PATH to a local model folder (save_pretrained layout), or run once with network to cache it"


def raise_missing_weights(what: str, local: bool, exc: BaseException, hint: str) -> None:
    """Weights that are neither local nor cached while the Hub is unreachable: raise the one-line
    :class:`~biomedica_hf.errors.MissingWeightsError` saying what fixes it (else return)."""
    if local or not (hub_offline() or unreachable(exc)):
        return
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub cannot be reached"
    raise MissingWeightsError(f"{what} not in the local Hugging Face cache and {why}", hint) from exc


def fail_fast_when_unreachable(name: str, hint: str = BACKBONE_HINT) -> None:
    """A Hub id that is not cached, with a Hub that is off (``HF_HUB_OFFLINE``) or does not answer: the one-line
    error now, not after the download client's retries (nor, called before them, after the model libraries'
    imports: torch and transformers take seconds)."""
    if is_local_path(name):
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, local_files_only=True, allow_patterns=["config.json"])
        return                                  # cached: from_pretrained will not need the network
    except Exception as exc:  # noqa: BLE001 - not cached (or not a repo id): ask the network
        if hub_offline():
            raise_missing_weights(f"embedding model {name!r} is", False, exc, hint)
        log.debug("%s is not cached (%s): asking the Hub", name, exc)
    if not hub_reachable():
        raise_missing_weights(f"embedding model {name!r} is", False, ConnectionError(
            f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co')} cannot be reached"), hint)


__all__ = ["BACKBONE_HINT", "fail_fast_when_unreachable", "raise_missing_weights"]
