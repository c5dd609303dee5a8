"""Training: configs and presets (:mod:`.config`), data sets (:mod:`.data`), the denoising losses
(:mod:`.losses`), the model directory on disk (:mod:`.checkpoint`), the training loop
(:mod:`.trainer`) with its objectives (:mod:`.objectives`: denoising and distillation), the
noise-aware classifier of classifier guidance (:mod:`.classifier`) and the autoencoder of latent
diffusion (:mod:`.autoencoder`).

This layer builds on the math core, the networks and the methods; :mod:`difflab.pipeline` loads
what it writes. See docs/training.md.
"""
from .autoencoder import AE_PRESETS, AutoencoderTrainConfig, load_autoencoder, train_autoencoder
from .checkpoint import CheckpointError, find_model_dir, read_config, save_checkpoint
from .classifier import ClassifierTrainConfig, load_classifier, train_classifier
from .config import PRESETS, TrainConfig, config_from_dict, load_config, save_config
from .data import BUILTINS, DataError, Dataset, load_dataset
from .losses import denoising_loss, diffusion_loss
from .trainer import train

__all__ = ["TrainConfig", "PRESETS", "load_config", "save_config", "config_from_dict", "Dataset", "DataError",
           "BUILTINS", "load_dataset", "denoising_loss", "diffusion_loss", "train", "save_checkpoint",
           "find_model_dir", "read_config", "CheckpointError", "ClassifierTrainConfig", "train_classifier",
           "load_classifier", "AE_PRESETS", "AutoencoderTrainConfig", "train_autoencoder", "load_autoencoder"]
