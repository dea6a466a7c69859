"""biomedica-hf: PMC-OA -> Hugging Face-native biomedical image-caption dataset."""
__version__ = "0.1.0"
