"""Model families, built from plain parameters (no Optuna, no study): a best config rebuilds
without one. `activations` is the registry of activation functions and the layers they become."""

from sweep.models.cnn import ACTIVATION_LAYERS, MODELS, build_model, seed_cnn

__all__ = ["ACTIVATION_LAYERS", "MODELS", "build_model", "seed_cnn"]
