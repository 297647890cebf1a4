"""The mini-Enformer in Keras 3: configs, layers, model, training pieces, metrics, saving."""

from model.config import ModelConfig, TrainConfig, split_config
from model.layers import BaseOneHot, RelativeMultiHeadAttention
from model.metrics import mse, pearson, poisson, spearman
from model.mini_enformer import build_model, build_training_model, core_model
from model.saving import export_serving, load_model, save_model
from model.training import compile_for_training, make_optimizer, poisson_loss, set_precision

__all__ = [
    "BaseOneHot",
    "ModelConfig",
    "RelativeMultiHeadAttention",
    "TrainConfig",
    "build_model",
    "build_training_model",
    "compile_for_training",
    "core_model",
    "export_serving",
    "load_model",
    "make_optimizer",
    "mse",
    "pearson",
    "poisson",
    "poisson_loss",
    "save_model",
    "set_precision",
    "split_config",
    "spearman",
]
