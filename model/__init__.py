"""The model families in Keras 3 (mini-Enformer, LegNet): configs, layers, models, training pieces, metrics, saving, and the k-mer reference.

Names are imported on first use (PEP 562), so `model.config` and `model.metrics`
load without Keras: a study's driver validates configs and reads metrics without
ever importing TensorFlow. A name here never repeats a submodule's name: importing
the submodule would put the module in its place (the k-mer reference is
`model.kmer_reference.kmer_reference`).
"""

from importlib import import_module

_HOMES = {
    "ModelConfig": "model.config",
    "TrainConfig": "model.config",
    "split_config": "model.config",
    "BaseOneHot": "model.layers",
    "RelativeMultiHeadAttention": "model.layers",
    "ExpectedBin": "model.bins",
    "bin_kl_divergence": "model.bins",
    "expected_bin": "model.bins",
    "soft_bin_kl_loss": "model.bins",
    "soft_bin_targets": "model.bins",
    "FAMILIES": "model.config",
    "InputConfig": "model.config",
    "LEGNET_RECIPE": "model.config",
    "LegNetConfig": "model.config",
    "TrialConfig": "model.config",
    "build_model": "model.families",
    "build_network": "model.families",
    "build_training_model": "model.families",
    "core_model": "model.families",
    "mse": "model.metrics",
    "paired_pearson_difference": "model.metrics",
    "pearson_interval": "model.metrics",
    "pearson": "model.metrics",
    "poisson": "model.metrics",
    "spearman": "model.metrics",
    "export_serving": "model.saving",
    "load_model": "model.saving",
    "save_model": "model.saving",
    "StrandAveraged": "model.strand",
    "reverse_complement_codes": "model.strand",
    "compile_for_training": "model.training",
    "learning_rate_schedule": "model.training",
    "make_optimizer": "model.training",
    "poisson_loss": "model.training",
    "resolve_batch_size": "model.training",
    "set_precision": "model.training",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
