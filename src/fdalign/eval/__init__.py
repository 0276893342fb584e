"""Evaluation: feature extraction, accuracy, evaluating several heads on ID/OOD sets, reports."""

from fdalign.eval.features import extract_features
from fdalign.eval.metrics import (
    mean_std,
    remap_labels,
    restrict_logits,
    subset_accuracy,
    topk_accuracy,
    true_class_rank,
)
from fdalign.eval.pipeline import EvalSet, apply_head, encode_once, run_evaluation, score
from fdalign.eval.report import metrics_table, render_report, write_metrics, write_report

__all__ = [
    "extract_features",
    "topk_accuracy",
    "true_class_rank",
    "restrict_logits",
    "remap_labels",
    "subset_accuracy",
    "mean_std",
    "EvalSet",
    "apply_head",
    "score",
    "run_evaluation",
    "encode_once",
    "metrics_table",
    "render_report",
    "write_metrics",
    "write_report",
]
