"""Templates of the model cards (README.md of exported models), rendered by biomedica_hf.clip.card."""
