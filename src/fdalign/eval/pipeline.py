"""Evaluate several (encoder, head) models on several evaluation sets, encoding each set once per encoder.

Zero-shot CLIP, a linear probe and Tip-style heads on a frozen encoder all read the same image
features; only the cheap heads differ. So the image features of each set are computed once per
*distinct* encoder (by module identity) and every head sharing that encoder reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from fdalign.eval import featcache
from fdalign.eval.metrics import remap_labels, restrict_logits, topk_accuracy

ROLES = ("test", "val", "ood")


@dataclass
class EvalSet:
    """One evaluation set.

    Attributes:
        name: shown in tables and used as the key in ``metrics.json``.
        dataset: yields ``(image [3,H,W], label)`` with labels indexing the heads' ``C`` classes.
        class_subset: ID class indices present in this set (ImageNet-A/-R: 200 of 1000); logits
            are restricted to these columns before top-k. None = all classes.
        role: ``"test"`` (in-distribution), ``"val"`` or ``"ood"``; reports group sets by it.
    """

    name: str
    dataset: Dataset
    class_subset: list[int] | None = None
    role: str = "test"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"EvalSet role must be one of {ROLES}, got {self.role!r}")


@torch.no_grad()
def apply_head(head: nn.Module, features: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``[N, D]`` CPU features -> ``[N, C]`` float32 CPU logits, in chunks on the head's device.

    The head is put in eval mode for the call and its mode restored afterwards.
    """
    p = next(iter(head.parameters()), None)
    if p is None:
        p = next(iter(head.buffers()), None)
    device = p.device if p is not None else torch.device("cpu")
    was_training = head.training
    head.eval()
    try:
        out = [head(features[i : i + chunk].to(device)).float().cpu() for i in range(0, features.shape[0], chunk)]
    finally:
        head.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def score(logits: torch.Tensor, labels: torch.Tensor, class_subset: Sequence[int] | None = None, ks=(1, 5)) -> dict:
    """``{"top1", "top5", "n"}`` for ``[N, C]`` logits and ``[N]`` ID labels (restricted to ``class_subset``)."""
    acc = topk_accuracy(restrict_logits(logits, class_subset), remap_labels(labels, class_subset), ks)
    out = {f"top{k}": acc[k] for k in ks}
    out["n"] = int(labels.shape[0])
    return out


def run_evaluation(
    models: Mapping[str, tuple[nn.Module, nn.Module]],
    eval_sets: dict[str, EvalSet],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: bool = True,
    num_workers: int = 0,
    on_set: Callable[[str, dict], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """Top-1/top-5 of every model on every set.

    Args:
        models: ``{name: (encoder, head)}``; encoder ``[B,3,H,W] -> [B,D]`` unnormalised, head
            ``[B,D] -> [B,C]``. Models passing the *same* encoder object share its features.
        eval_sets: ``{name: EvalSet}``.
        on_set: called as ``on_set(set name, {model: scores})`` once a set is scored (progress lines).

    Returns:
        ``{set_name: {model_name: {"top1": %, "top5": %, "n": N}}}``.
    """
    # group models by encoder identity, keeping first-seen order
    groups: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, (encoder, _) in models.items():
        groups.setdefault(id(encoder), (encoder, []))[1].append(name)

    results: dict[str, dict[str, dict]] = {s: {} for s in eval_sets}
    for set_name, es in eval_sets.items():
        for encoder, names in groups.values():
            # a frozen encoder's features may come from the sweep's feature cache (fdalign.eval.featcache)
            feats, labels = featcache.extract_features(
                encoder,
                es.dataset,
                batch_size=batch_size,
                device=device,
                num_workers=num_workers,
                precision=precision,
                progress=progress,
                desc=f"{set_name} ({', '.join(names)})",
            )
            for name in names:
                logits = apply_head(models[name][1], feats)
                results[set_name][name] = score(logits, labels, es.class_subset)
        if on_set is not None:
            on_set(set_name, {m: results[set_name][m] for m in models})
    # models in the caller's order, not grouped by encoder
    return {s: {m: r[m] for m in models} for s, r in results.items()}
