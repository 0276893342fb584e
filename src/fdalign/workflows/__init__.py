"""One function per thing a command does: typed config in, result object out, the run directory written.

``finetune`` (``fdalign train``), ``evaluate`` / ``evaluate_config`` (``fdalign eval`` / ``zeroshot``),
``meta_train`` / ``meta_evaluate`` (``fdalign meta-train`` / ``meta-eval``), ``export_run`` and
``predict_images``. The modules import torch only inside their functions, so importing this package
stays cheap.
"""

from fdalign.workflows.deploy import export_run, predict_images
from fdalign.workflows.evaluation import EvalConfig, Evaluation, evaluate, evaluate_config
from fdalign.workflows.kshot import Run, check_run_request, finetune
from fdalign.workflows.loaded import FineTunedModel, list_models, load_run
from fdalign.workflows.meta import (
    EpisodeEvaluation,
    MetaEvalConfig,
    MetaRun,
    meta_evaluate,
    meta_evaluate_config,
    meta_train,
)

__all__ = [
    "EpisodeEvaluation",
    "EvalConfig",
    "FineTunedModel",
    "Evaluation",
    "MetaEvalConfig",
    "MetaRun",
    "Run",
    "check_run_request",
    "evaluate",
    "evaluate_config",
    "export_run",
    "finetune",
    "list_models",
    "load_run",
    "meta_evaluate",
    "meta_evaluate_config",
    "meta_train",
    "predict_images",
]
