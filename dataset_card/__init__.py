"""Templates of the dataset card (README.md of the Hub dataset folder), rendered by biomedica_hf.dataset.card."""
