"""The pieces of ``train/`` and ``eval/`` that experiments (sweeps, reports, plots) use.

``experiments/`` reaches training and evaluation through the library layer only: the workflows
for running, and this module for what a run is made of (config classes, run files, row names,
statistics). Imports torch: import it inside functions.
"""

from fdalign.data.names import dataset_key
from fdalign.eval import (
    featcache,  # the sweep's shared feature cache of frozen encoders
    pixelcache,  # the sweep's shared decoded evaluation images
)
from fdalign.eval.features import extract_features
from fdalign.eval.heads import HEAD_NAMES
from fdalign.eval.metrics import mean_std
from fdalign.train.config import TrainConfig, warmup_warning
from fdalign.train.meta_config import MetaConfig
from fdalign.train.run import MODEL_FILE, load_model, load_run, load_run_model
from fdalign.train.wiseft import alpha_name

__all__ = [
    "HEAD_NAMES",
    "MODEL_FILE",
    "MetaConfig",
    "TrainConfig",
    "alpha_name",
    "dataset_key",
    "extract_features",
    "featcache",
    "pixelcache",
    "load_model",
    "load_run",
    "load_run_model",
    "mean_std",
    "warmup_warning",
]
