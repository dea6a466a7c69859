"""biomedica-hf: PMC-OA -> Hugging Face-native biomedical image-caption dataset."""
__version__ = "0.1.0"


def load_biomedica(*args, **kwargs):
    """Filtered streaming of a biomedica-hf dataset (see :func:`biomedica_hf.loader.load_biomedica`)."""
    from .loader import load_biomedica as _load

    return _load(*args, **kwargs)


__all__ = ["load_biomedica", "__version__"]
