"""One function per thing a command does: typed config in, result object out, the run directory written.

``finetune`` (``fdalign train``), ``evaluate`` / ``zeroshot`` (``fdalign eval`` / ``zeroshot``),
``meta_train`` / ``meta_evaluate`` (``fdalign meta-train`` / ``meta-eval``), ``export_run`` and
``predict_images``. Names load on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Run": "fdalign.workflows.kshot",
    "finetune": "fdalign.workflows.kshot",
    "check_run_request": "fdalign.workflows.kshot",
    "EvalConfig": "fdalign.workflows.evaluation",
    "Evaluation": "fdalign.workflows.evaluation",
    "evaluate": "fdalign.workflows.evaluation",
    "evaluate_config": "fdalign.workflows.evaluation",
    "MetaRun": "fdalign.workflows.meta",
    "MetaEvalConfig": "fdalign.workflows.meta",
    "meta_train": "fdalign.workflows.meta",
    "meta_evaluate": "fdalign.workflows.meta",
    "meta_evaluate_config": "fdalign.workflows.meta",
    "export_run": "fdalign.workflows.deploy",
    "predict_images": "fdalign.workflows.deploy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fdalign.workflows' has no attribute {name!r}")
