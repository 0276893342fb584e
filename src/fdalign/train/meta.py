"""FD-Align meta-training: fine-tune the image encoder on N-way K-shot episodes of the base classes.

Each optimiser step takes ``episodes_per_step`` episodes; all their images go through ``f_t`` (and
``f_0``) in one batch via :func:`fdalign.train.step.fdalign_forward`, whose ``head`` is a closure
turning each episode's support features into ProtoNet logits for its queries. So the loss is CE
over the query logits plus ``beta x`` the spurious KL on every image of the episodes (support and
query), with spurious prototypes from the base class names (SPC). Validation episodes come from the
val classes and only choose the epoch. The run directory, resume, ``log.csv`` and checkpoints
follow ``fdalign train`` (:mod:`fdalign.train.trainer`, :mod:`fdalign.train.checkpoint`).

Determinism: training episode ``i = epoch * episodes_per_epoch + j`` and its augmentation are pure
functions of ``(seed, i)`` (:class:`fdalign.data.episodes.EpisodeDataset`), so a resumed run sees
the same episodes whatever the worker count.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fdalign.data.episodes import TRAIN_FLAGS, EpisodeDataset, EpisodeSpec, class_pool, sample_episodes
from fdalign.errors import FDAlignError
from fdalign.heads.episodes import ProtoNetHead
from fdalign.selection import EvalSplit, SelectionLog, select, val_score
from fdalign.train.meta_config import META_NON_SEMANTIC, MetaConfig, meta_config_hash  # noqa: F401 (re-exported)
from fdalign.train.step import LossSettings, fdalign_forward, frozen_copy, set_frozen_mode


@dataclass
class MetaResult:
    """What :func:`meta_train` returns; ``encoder`` holds the selected epoch's weights."""

    encoder: torch.nn.Module
    proto_scale: float
    zeroshot_encoder_state: dict = field(repr=False)
    best_epoch: int
    best_val: float
    val_acc: list[float]
    steps: int
    seconds: float
    selection: SelectionLog


def episode_head(proto: ProtoNetHead, spec: EpisodeSpec, episodes: int):
    """The ``head`` of :func:`fdalign_forward`: ``[E*N*(K+Q), D]`` -> query logits ``[E*N*Q, N]``, and the labels.

    Each episode's images are its support (class-major) then its queries, episodes one after another.
    """
    nk = spec.n_way * spec.k_shot

    def head(features: torch.Tensor) -> torch.Tensor:
        f = features.reshape(episodes, spec.n_way * spec.per_class, -1)
        return proto(f[:, :nk], f[:, nk:], spec.n_way).reshape(-1, spec.n_way)

    labels = torch.arange(spec.n_way).repeat_interleave(spec.q_query).repeat(episodes)
    return head, labels


def _val_episodes(val_split, cfg: MetaConfig, transform):
    """The validation episodes and the val images they read, as an EvalSplit with role ``val``."""
    from fdalign.data.datasets import ImageDataset
    from fdalign.eval.episodes import reindex, used_samples

    pool = class_pool(val_split, cfg.spec, cfg.on_small, TRAIN_FLAGS)
    eps = sample_episodes(pool, cfg.spec, cfg.seed, range(cfg.val_episodes))
    used = used_samples({"val": (pool, eps)})
    desc = (
        f"val classes: {cfg.val_episodes} {cfg.spec.name} episodes over {len(pool.classes)} classes "
        f"({len(used)} images)"
    )
    return EvalSplit(ImageDataset(val_split.subset(used.tolist()), transform), "val", desc), reindex(
        eps, used, len(val_split)
    )


def _val_accuracy(encoder, proto: ProtoNetHead, split: EvalSplit, eps, cfg: MetaConfig, device) -> float:
    from fdalign.eval.episodes import episode_accuracy
    from fdalign.eval.features import extract_features

    def score(ds) -> float:
        feats, _ = extract_features(
            encoder,
            ds,
            batch_size=cfg.eval_batch_size,
            device=device,
            progress=False,
            precision=cfg.precision if device.type == "cuda" else "fp32",
            desc="val",
        )
        return float(episode_accuracy(feats, eps, cfg.spec, "proto", proto_scale=proto.scale).mean())

    return val_score(split, score)


@dataclass
class _Progress:
    """What a checkpoint carries between epochs (1-based epochs in ``val`` order)."""

    epoch: int = 0
    step: int = 0
    val: list = field(default_factory=list)
    best: float = -1.0
    best_epoch: int = 0

    def to_meta(self, chash: str) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "config_hash": chash,
            "val_acc": self.val,
            "best_val": self.best,
            "best_epoch": self.best_epoch,
        }


def _resume(cfg: MetaConfig, run_dir: Path, chash: str, encoder, proto, optimizer) -> _Progress:
    """Load ``run_dir/checkpoint`` into the modules (as ``fdalign train``: same settings hash or refuse)."""
    from fdalign.train.checkpoint import load_checkpoint, restore_rng

    ckpt_dir = run_dir / "checkpoint"
    if not (ckpt_dir / "last.json").is_file():
        return _Progress()
    if not cfg.resume:
        raise FDAlignError(f"{run_dir} already holds a training checkpoint; pass --resume or choose a new --out")
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.meta.get("config_hash") != chash:
        raise FDAlignError(
            f"cannot resume {run_dir}: its checkpoint was made with different settings "
            f"(config hash {ckpt.meta.get('config_hash')} vs {chash}); use a new --out"
        )
    encoder.load_state_dict(ckpt.encoder)
    proto.load_state_dict(ckpt.head)
    optimizer.load_state_dict(ckpt.optimizer)
    restore_rng(ckpt.rng_tensors, ckpt.meta.get("rng", {}))
    m = ckpt.meta
    return _Progress(ckpt.epoch, ckpt.step, list(m["val_acc"]), float(m["best_val"]), int(m["best_epoch"]))


def _train_epoch(
    loader,
    encoder,
    frozen,
    proto,
    optimizer,
    spurious,
    settings: LossSettings,
    cfg: MetaConfig,
    state: _Progress,
    total_steps: int,
    device,
    log_row,
) -> None:
    """One epoch of optimiser steps; each step's loss is :func:`fdalign_forward` on its episodes' images."""
    from fdalign.eval.features import autocast_context
    from fdalign.train.trainer import cosine_lr

    precision = cfg.precision if device.type == "cuda" else "fp32"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    t_prev = time.perf_counter()
    for images, _classes in loader:  # images [E, N*(K+Q), 3, H, W]
        lr = cosine_lr(state.step, total_steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        for grp in optimizer.param_groups:
            grp["lr"] = lr
        head, labels = episode_head(proto, cfg.spec, images.shape[0])
        with autocast_context(device, precision):
            loss, parts = fdalign_forward(
                encoder, frozen, head, images.flatten(0, 1).to(device), labels.to(device), spurious, settings
            )
        if not torch.isfinite(loss):
            raise FDAlignError(f"the loss became {loss.item()} at step {state.step + 1}; lower --lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        state.step += 1
        now = time.perf_counter()
        ips = images.shape[0] * images.shape[1] / max(now - t_prev, 1e-9)
        t_prev = now
        log_row(
            {
                "step": state.step,
                "epoch": state.epoch + 1,
                "lr": lr,
                "ce": parts["ce"].item(),
                "kl": parts["kl"].item(),
                "loss": loss.item(),
                "images_per_s": round(ips, 2),
            }
        )


def meta_train(
    backend,
    base_split,
    val_split,
    spurious: torch.Tensor,
    cfg: MetaConfig,
    run_dir,
    base_prototypes: torch.Tensor,
    progress: bool = True,
    on_epoch_end=None,
) -> MetaResult:
    """Meta-train ``backend.image_encoder`` in place on ``base_split`` episodes; choose the epoch on ``val_split``.

    Args:
        spurious: ``[k, D]`` spurious prototypes of the base class names (SPC-corrected or not).
        base_prototypes: ``[C_base, D]`` class prototypes, saved as the model file's (zero-shot) head.
        on_epoch_end: ``f(epoch (1-based), val accuracy)`` after each checkpoint (tests simulate kills).
    """
    from tqdm.auto import tqdm

    from fdalign.heads import PrototypeHead
    from fdalign.train.checkpoint import save_checkpoint
    from fdalign.train.run import MODEL_FILE, SELECTION_FILE, save_model
    from fdalign.train.trainer import (
        _CSVLog,
        _tensorboard,
        build_optimizer,
        check_finite_weights,
        param_groups,
        resolve_device,
    )

    cfg.validate()
    run_dir, spec, device = Path(run_dir), cfg.spec, resolve_device(cfg.device)
    backend.to(device)
    encoder = backend.image_encoder
    zeroshot_state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    frozen = frozen_copy(encoder, cfg.f0_mode) if cfg.beta != 0 else None  # the pretrained weights, before resume
    proto = ProtoNetHead(cfg.proto_scale, cfg.learn_scale).to(device)
    settings = LossSettings(
        alpha=cfg.alpha,
        beta=cfg.beta,
        direction=cfg.kl_direction,
        scale=float(cfg.temperature or backend.logit_scale),
        normalize_prototypes=not (cfg.spc and not cfg.spc_renormalize),
    )
    pool = class_pool(base_split, spec, cfg.on_small, TRAIN_FLAGS)
    train_tf = backend.preprocess_train(scale=tuple(cfg.crop_scale), hflip=cfg.hflip)
    val_set, val_eps = _val_episodes(val_split, cfg, backend.preprocess_eval())
    zs_head = PrototypeHead(base_prototypes, float(backend.logit_scale))
    encoder.requires_grad_(True)
    named = list(encoder.named_parameters()) + [(f"head.{n}", p) for n, p in proto.named_parameters()]
    optimizer = build_optimizer(cfg, param_groups(named, cfg.weight_decay, cfg.wd_skip_norm_bias), cfg.lr)
    total_steps = math.ceil(cfg.episodes_per_epoch / cfg.episodes_per_step) * cfg.epochs
    chash = meta_config_hash(cfg)
    state = _resume(cfg, run_dir, chash, encoder, proto, optimizer)
    csv_log = _CSVLog(run_dir / "log.csv", keep_until_step=state.step if state.epoch else None)
    tb = _tensorboard(run_dir, cfg.tensorboard)
    show = progress and cfg.progress
    model_meta = {
        "classnames": list(base_split.classnames),
        "base_fingerprint": str(getattr(backend, "fingerprint", "")),
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "model_config": cfg.model_config,
        "mode": "meta",
    }

    def log_row(row):
        csv_log.write(row)
        bar.set_postfix(ce=f"{row['ce']:.3f}", kl=f"{row['kl']:.4f}", lr=f"{row['lr']:.2e}")
        for k in ("lr", "ce", "kl", "loss", "images_per_s") if tb is not None else ():
            tb.add_scalar(f"train/{k}", row[k], row["step"])

    t0 = time.time()
    try:
        for epoch in range(state.epoch, cfg.epochs):
            episodes = EpisodeDataset(
                pool, spec, cfg.seed, train_tf, cfg.episodes_per_epoch, epoch * cfg.episodes_per_epoch
            )
            loader = DataLoader(
                episodes,
                batch_size=cfg.episodes_per_step,
                num_workers=cfg.num_workers,
                pin_memory=device.type == "cuda",
            )
            encoder.train()
            proto.train()
            if frozen is not None:
                set_frozen_mode(frozen, cfg.f0_mode)
            bar = tqdm(loader, desc=f"meta epoch {epoch + 1}/{cfg.epochs}", disable=not show, leave=False)
            _train_epoch(
                bar,
                encoder,
                frozen,
                proto,
                optimizer,
                spurious.to(device),
                settings,
                cfg,
                state,
                total_steps,
                device,
                log_row,
            )
            bar.close()
            check_finite_weights(encoder, proto, epoch + 1, cfg.lr)  # a NaN encoder scores every episode "right"
            # ---- end of epoch: validate on val-class episodes, keep the best, checkpoint ------------
            acc = _val_accuracy(encoder, proto, val_set, val_eps, cfg, device)
            state.epoch, improved = epoch + 1, acc > state.best  # ties keep the earlier epoch, as select() does
            state.val.append(acc)
            if improved:
                state.best, state.best_epoch = acc, epoch + 1
            if improved or cfg.selection == "last":
                save_model(
                    run_dir / MODEL_FILE,
                    encoder,
                    zs_head,
                    zs_head,
                    dict(model_meta, epoch=epoch + 1, val_acc=acc, proto_scale=proto.scale),
                )
            csv_log.flush()
            if tb is not None:
                tb.add_scalar("val/episode_acc", acc, epoch + 1)
            save_checkpoint(
                run_dir / "checkpoint", encoder=encoder, head=proto, optimizer=optimizer, meta=state.to_meta(chash)
            )
            if show:
                tqdm.write(
                    f"epoch {epoch + 1}/{cfg.epochs}: val {spec.name} {acc:.2f}%" + ("  (best)" if improved else "")
                )
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, acc)
    finally:
        csv_log.close()
        if tb is not None:
            tb.close()
    chosen, selection = _select_epoch(state, val_set, cfg, run_dir / SELECTION_FILE)
    return MetaResult(
        encoder,
        _load_selected(run_dir / MODEL_FILE, encoder, chosen),
        zeroshot_state,
        chosen,
        state.val[chosen - 1],
        state.val,
        state.step,
        time.time() - t0,
        selection,
    )


def _select_epoch(state: _Progress, val_set: EvalSplit, cfg: MetaConfig, path: Path) -> tuple[int, SelectionLog]:
    """The epoch to keep (best on val episodes through :func:`select`, or the last), recorded in ``selection.json``."""
    selection = SelectionLog()
    scores = {e + 1: v for e, v in enumerate(state.val)}
    if cfg.selection == "best":
        chosen = select("epoch", scores, val_set, selection, metric=f"val {cfg.spec.name} accuracy")
    else:
        chosen = len(state.val)
        selection.entries["epoch"] = {
            "chosen": chosen,
            "on": "rule: the last epoch (no data used)",
            "metric": "-",
            "score": state.val[-1],
            "scores": {str(k): v for k, v in scores.items()},
        }
    selection.save(path)
    return int(chosen), selection


def _load_selected(model_file: Path, encoder, chosen: int) -> float:
    """Load the selected epoch's encoder (saved at that epoch) into ``encoder``; return its ProtoNet scale."""
    from fdalign.train.run import load_model

    saved = load_model(model_file)
    if int(saved.metadata.get("epoch", -1)) != chosen:
        raise RuntimeError(f"{model_file} holds epoch {saved.metadata.get('epoch')}, not the selected {chosen}")
    encoder.load_state_dict(saved.encoder)
    encoder.eval().requires_grad_(False)
    return float(saved.metadata["proto_scale"])


def zeroshot_copy(encoder: torch.nn.Module, state: dict) -> torch.nn.Module:
    """A copy of ``encoder`` holding ``state`` (the pretrained weights, for the zero-shot baseline)."""
    enc = copy.deepcopy(encoder)
    enc.load_state_dict(state)
    return enc


__all__ = [
    "META_NON_SEMANTIC",
    "MetaConfig",
    "MetaResult",
    "episode_head",
    "meta_config_hash",
    "meta_train",
    "zeroshot_copy",
]
