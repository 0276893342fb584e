"""Training: the config, what learns (``--trainable``: LoRA, partial), the loop, checkpoints and resume, model selection, WiSE-FT, run directories.

Heavy modules (torch) load on first use of a name, so ``fdalign --help`` stays fast.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "fdalign.train.config",
    "train": "fdalign.train.trainer",
    "TrainResult": "fdalign.train.trainer",
    "cosine_lr": "fdalign.train.trainer",
    "EvalSplit": "fdalign.selection",
    "SelectionLog": "fdalign.selection",
    "select": "fdalign.selection",
    "val_score": "fdalign.selection",
    "interpolate_state_dicts": "fdalign.train.wiseft",
    "load_run": "fdalign.train.run",
    "LoadedRun": "fdalign.train.run",
    "save_model": "fdalign.train.run",
    "load_model": "fdalign.train.run",
    "TrainableSpec": "fdalign.train.trainable",
    "apply_trainable": "fdalign.train.trainable",
    "frozen_view": "fdalign.train.trainable",
    "adapters_disabled": "fdalign.train.trainable",
    "merge_adapters": "fdalign.train.trainable",
    "scale_adapters": "fdalign.train.trainable",
    "lora_target_names": "fdalign.train.trainable",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fdalign.train' has no attribute {name!r}")
