"""FD-Align: fine-tune CLIP on a few images per class without losing out-of-distribution robustness.

The library's entry points load on first use (PEP 562), so ``import fdalign`` and ``fdalign --help``
stay fast::

    import fdalign
    run = fdalign.finetune(fdalign.TrainConfig(model=..., data=..., shots=16, out="runs/x"))
    model = fdalign.load_run("runs/x")  # the selected model: .predict(paths), .encode_image(x)
"""

__version__ = "0.1.0"

import importlib  # noqa: E402

from fdalign.errors import FDAlignError  # noqa: E402

_EXPORTS = {
    "TrainConfig": "fdalign.train.config",
    "MetaConfig": "fdalign.train.meta_config",
    "Run": "fdalign.workflows.kshot",
    "finetune": "fdalign.workflows.kshot",
    "EvalConfig": "fdalign.workflows.evaluation",
    "Evaluation": "fdalign.workflows.evaluation",
    "evaluate": "fdalign.workflows.evaluation",
    "MetaRun": "fdalign.workflows.meta",
    "MetaEvalConfig": "fdalign.workflows.meta",
    "meta_train": "fdalign.workflows.meta",
    "meta_evaluate": "fdalign.workflows.meta",
    "export": "fdalign.workflows.deploy",
    "export_run": "fdalign.workflows.deploy",
    "predict": "fdalign.workflows.deploy",
    "predict_images": "fdalign.workflows.deploy",
    "load_clip": "fdalign.backends",
    "load_run": "fdalign.workflows.loaded",
    "list_models": "fdalign.workflows.loaded",
    "FineTunedModel": "fdalign.workflows.loaded",
    "Predictions": "fdalign.prediction",
    "as_backend": "fdalign.backends.custom",
    "FDAlignLoss": "fdalign.losses",
}

__all__ = ["__version__", "FDAlignError", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fdalign' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
