"""Evaluate several (encoder, head) models on several evaluation sets, decoding each set once.

Zero-shot CLIP, a linear probe and Tip-style heads on a frozen encoder all read the same image
features; only the cheap heads differ. So the image features of each set are computed once per
*distinct* encoder (by module identity) and every head sharing that encoder reads them. And the
distinct encoders (zero-shot, fine-tuned, each WiSE-FT mix) share one pass over the images: each batch
is decoded once (or read from the pixel cache, :mod:`fdalign.eval.pixelcache`) and fed to every encoder
whose features are not in the feature cache (:mod:`fdalign.eval.featcache`), so memory holds one batch
of images whatever the number of models.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from fdalign.eval import featcache, pixelcache
from fdalign.eval.features import autocast_context
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
    num_workers: int | None = None,
    channels_last: bool = False,
    on_set: Callable[[str, dict], None] | None = None,
) -> dict[str, dict[str, dict]]:
    """Top-1/top-5 of every model on every set, each set decoded once (:func:`encode_once`).

    Args:
        models: ``{name: (encoder, head)}``; encoder ``[B,3,H,W] -> [B,D]`` unnormalised, head
            ``[B,D] -> [B,C]``. Models passing the *same* encoder object share its features.
        eval_sets: ``{name: EvalSet}``.
        on_set: called as ``on_set(set name, {model: scores})`` once a set is scored (progress lines).
        num_workers: DataLoader workers decoding the images (None: :func:`pixelcache.default_workers`).
        channels_last: on CUDA, feed the encoders ``channels_last`` images (off by default: see
            docs/evaluation-at-scale.md for the check that it keeps top-1).

    Returns:
        ``{set_name: {model_name: {"top1": %, "top5": %, "n": N}}}``.
    """
    # group models by encoder identity, keeping first-seen order
    groups: dict[int, tuple[nn.Module, list[str]]] = {}
    for name, (encoder, _) in models.items():
        groups.setdefault(id(encoder), (encoder, []))[1].append(name)
    encoders = [encoder for encoder, _ in groups.values()]

    results: dict[str, dict[str, dict]] = {s: {} for s in eval_sets}
    for set_name, es in eval_sets.items():
        feats, labels = encode_once(
            encoders,
            es.dataset,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            precision=precision,
            progress=progress,
            name=set_name,
            channels_last=channels_last,
        )
        for f, (_, names) in zip(feats, groups.values()):
            for name in names:
                results[set_name][name] = score(apply_head(models[name][1], f), labels, es.class_subset)
        if on_set is not None:
            on_set(set_name, {m: results[set_name][m] for m in models})
    # models in the caller's order, not grouped by encoder
    return {s: {m: r[m] for m in models} for s, r in results.items()}


@torch.no_grad()
def encode_once(
    encoders: Sequence[nn.Module],
    dataset: Dataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    num_workers: int | None = None,
    precision: str = "fp32",
    progress: bool = True,
    name: str = "features",
    channels_last: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``([features [N, D] float32 CPU per encoder], labels [N])``, decoding ``dataset`` at most once.

    A :func:`~fdalign.eval.featcache.frozen` encoder's features come from the feature cache when it holds
    them (and are stored there otherwise); the others share one pass over the images, batch by batch.
    With every encoder cached, no image is decoded."""
    device = torch.device(device)
    feats: list = [None] * len(encoders)
    labels = None
    todo = []
    with contextlib.ExitStack() as stack:
        for i, encoder in enumerate(encoders):
            look = featcache.lookup(encoder, dataset, precision, device)
            if look is not None and look.hit is None:
                # one worker computes an entry; a second asking meanwhile waits here, then reads it
                stack.enter_context(look.cache.computing(look.key))
                look.hit = look.recheck()
            if look is not None and look.hit is not None:
                feats[i], labels = look.hit
            else:
                todo.append((i, look))
        if todo:
            out, labels, seconds = _one_pass(
                [encoders[i] for i, _ in todo],
                dataset,
                batch_size,
                device,
                num_workers,
                precision,
                progress,
                name,
                channels_last,
            )
            for (i, look), f, sec in zip(todo, out, seconds):
                feats[i] = f
                if look is not None:
                    look.store(f, labels, sec, name)
    return feats, labels


def _one_pass(encoders, dataset, batch_size, device, num_workers, precision, progress, name, channels_last):
    """``(features per encoder, labels, encoder seconds per encoder)`` over one pass of ``dataset``."""
    modes = [e.training for e in encoders]
    fast = channels_last and device.type == "cuda"
    for e in encoders:
        e.eval()
        if fast:
            e.to(memory_format=torch.channels_last)
    feats: list[list[torch.Tensor]] = [[] for _ in encoders]
    seconds, labels = [0.0] * len(encoders), []
    batches = pixelcache.batches(dataset, batch_size, device, num_workers, progress, name, name)
    try:
        for images, y in batches:
            if fast:
                images = images.contiguous(memory_format=torch.channels_last)
            labels.append(y)
            for j, encoder in enumerate(encoders):
                t0 = time.perf_counter()
                with autocast_context(device, precision):
                    f = encoder(images)
                feats[j].append(f.float().cpu())
                seconds[j] += time.perf_counter() - t0
    finally:
        batches.close()  # on an error too: the pixel cache entry's lock is released, its temp file removed
        for e, mode in zip(encoders, modes):
            e.train(mode)
    if not labels:
        return [torch.empty(0, 0) for _ in encoders], torch.empty(0, dtype=torch.int64), seconds
    return [torch.cat(f) for f in feats], torch.cat(labels), seconds
