"""The mini-Enformer in Keras 3: configs, layers, model, training pieces, metrics, saving, and its k-mer reference."""

from model.config import ModelConfig, TrainConfig, split_config
from model.kmer_reference import kmer_reference
from model.layers import BaseOneHot, RelativeMultiHeadAttention
from model.metrics import mse, paired_pearson_difference, pearson, pearson_interval, poisson, spearman
from model.mini_enformer import build_model, build_training_model, core_model
from model.saving import export_serving, load_model, save_model
from model.strand import StrandAveraged, reverse_complement_codes
from model.training import (
    compile_for_training,
    learning_rate_schedule,
    make_optimizer,
    poisson_loss,
    resolve_batch_size,
    set_precision,
)

__all__ = [
    "BaseOneHot",
    "ModelConfig",
    "RelativeMultiHeadAttention",
    "StrandAveraged",
    "TrainConfig",
    "build_model",
    "build_training_model",
    "compile_for_training",
    "core_model",
    "export_serving",
    "kmer_reference",
    "learning_rate_schedule",
    "load_model",
    "make_optimizer",
    "mse",
    "paired_pearson_difference",
    "pearson",
    "pearson_interval",
    "poisson",
    "poisson_loss",
    "resolve_batch_size",
    "reverse_complement_codes",
    "save_model",
    "set_precision",
    "split_config",
    "spearman",
]
