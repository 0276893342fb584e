"""The FD-Align training loop.

One loop covers the three modes:

* ``fdalign``: the image encoder ``f_t`` (and a trainable head, if chosen) learn from
  ``alpha * CE + beta * KL(P_spur(f_t) || P_spur(f_0))``, where ``f_0`` is a frozen copy of the
  encoder run on the same augmented batch. With ``beta == 0`` the copy is never built or run, so
  this *is* plain full fine-tuning.
* ``linear-probe``: the encoder is frozen (eval mode, no gradients) and only the head learns, with CE.
* ``lp-ft``: ``lp_epochs`` of linear probe, then ``epochs`` of ``fdalign`` starting from the probe's
  best-on-val head (as released); each phase has its own optimiser, cosine schedule and epoch
  selection, and only ``fdalign`` epochs compete for the final model.

Determinism: the data order of epoch ``e`` is :func:`epoch_order` ``(seed, e, N)``, a permutation
drawn from a generator seeded with :func:`epoch_seed` ``(seed, e)``; the augmented view of image
``i`` is drawn under :func:`fdalign.data.views.view_seed` ``(seed, e, i)`` whatever the worker or
process that loads it; dropout draws from the global RNG, re-seeded with
:func:`augmentation_seed` ``(seed, e)`` at the start of every epoch. So an epoch's batches depend
only on ``(seed, e)``, a run resumed at an epoch boundary ends with bit-identical weights to an
uninterrupted one (on the same device and software), f0's answers can be cached across runs
(:mod:`fdalign.train.f0cache`) and data-parallel training sees the views one process would
(:mod:`fdalign.train.distributed`). The FD-Align loss itself is :func:`fdalign.train.step.fdalign_forward`.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fdalign.callbacks import CallbackList
from fdalign.data.views import SeededViews
from fdalign.errors import FDAlignError, option
from fdalign.heads import PrototypeHead
from fdalign.selection import EvalSplit, SelectionLog, select, val_score
from fdalign.train import distributed
from fdalign.train.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from fdalign.train.config import NON_SEMANTIC_FIELDS, TrainConfig
from fdalign.train.f0cache import F0Cache, f0_cache_key, state_fingerprint
from fdalign.train.methods import MethodSpec, method_spec
from fdalign.train.step import LossSettings, StepExtras, TextSide, fdalign_forward, frozen_copy, set_frozen_mode
from fdalign.train.trainable import (
    TrainableSpec,
    adapter_state_dict,
    apply_trainable,
    frozen_view,
    has_adapters,
    merge_adapters,
    set_trainable,
)

log = logging.getLogger(__name__)

LOG_COLUMNS = ("step", "epoch", "lr", "ce", "kl", "loss", "images_per_s")


# ----------------------------------------------------------------------------------------------
# pure helpers


def cosine_lr(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up ``base_lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, then
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2`` with
    ``t = (step - warmup_steps) / (total_steps - warmup_steps)``, so the first post-warm-up step
    runs at ``base_lr`` and the rate approaches ``min_lr`` at the end.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * min(t, 1.0)))


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    digest = hashlib.sha256(f"fdalign/{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def augmentation_seed(seed: int, epoch: int) -> int:
    """The global torch RNG is seeded with this at the start of epoch ``epoch``: augmentations made
    in the main process and dropout in ``f_t`` (and in ``f_0`` with ``f0_mode="released"``) draw from it."""
    return epoch_seed(seed, epoch) ^ 0xA06


def view_epoch(cfg: TrainConfig, epoch: int) -> int:
    """Whose augmented views epoch ``epoch`` sees: its own, or epoch ``epoch mod view_cycle``'s."""
    return epoch % cfg.view_cycle if cfg.view_cycle else epoch


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order in which epoch ``epoch`` visits the ``n`` training images:
    ``torch.randperm(n, generator=Generator().manual_seed(epoch_seed(seed, epoch)))``.

    Computed here rather than by ``DataLoader(shuffle=True)`` so that it depends on nothing but
    ``(seed, epoch, n)`` (not on how often the loader's generator is drawn from by wrappers).
    """
    g = torch.Generator()
    g.manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=g).tolist()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FDAlignError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FDAlignError(f"device {device!r} was asked for but CUDA is not available; use --device cpu")
    return dev


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float, skip_norm_bias: bool) -> list[dict]:
    """Two groups: with weight decay, and without for biases / norm gains / 1-D tensors (open_clip's rule)."""

    def no_decay(n: str, p: torch.Tensor) -> bool:
        return skip_norm_bias and (p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n)

    decay = [p for n, p in named if not no_decay(n, p)]
    rest = [p for n, p in named if no_decay(n, p)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups


def build_optimizer(cfg: TrainConfig, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)


def config_hash(cfg: TrainConfig) -> str:
    """Hash of the settings that change the result (resume refuses a different one)."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NON_SEMANTIC_FIELDS}
    # settings of a kind not in use change nothing; dropping them keeps the hashes of runs made before they existed
    if d.get("trainable", "full") != "lora":
        for k in ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets"):
            d.pop(k, None)
    if d.get("trainable") == "full":
        d.pop("trainable")
    if d.get("method") == "fd-align":  # the default method and prototypes: hashes of runs made before they existed
        d.pop("method")
    if d.get("spurious") == "real":
        d.pop("spurious")
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs with one optimiser and one cosine schedule."""

    name: str  # "linear-probe" or "fdalign"
    start: int  # first epoch (0-based, global)
    stop: int  # one past the last epoch
    lr: float
    train_encoder: bool
    use_kl: bool


def phases(cfg: TrainConfig) -> list[Phase]:
    use_kl = cfg.beta != 0 and method_spec(cfg.method).needs_f0  # whether f0 runs beside ft
    ft = lambda start: Phase("fdalign", start, start + cfg.epochs, cfg.lr, True, use_kl)  # noqa: E731
    if cfg.mode == "linear-probe":
        return [Phase("linear-probe", 0, cfg.epochs, cfg.lp_lr, False, False)]
    if cfg.mode == "lp-ft":
        return [Phase("linear-probe", 0, cfg.lp_epochs, cfg.lp_lr, False, False), ft(cfg.lp_epochs)]
    return [ft(0)]


def _frozen_copy(encoder: nn.Module, mode: str = "eval", dtype: torch.dtype | None = None) -> nn.Module:
    """f_0 (see :func:`fdalign.train.step.frozen_copy`); a module attribute so tests can intercept it.
    An encoder with LoRA adapters is its own f_0, adapters off (:func:`fdalign.train.trainable.frozen_view`)."""
    if has_adapters(encoder):
        return frozen_view(encoder, mode)
    return frozen_copy(encoder, mode, dtype)


def f0_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bfloat16 for ``f0_precision`` bf16, or auto on CUDA; None keeps the encoder's own dtype."""
    if cfg.f0_precision == "bf16" or (cfg.f0_precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _state_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _select_epoch(what: str, scores: dict[int, float], cfg: TrainConfig, val_set: EvalSplit, log: SelectionLog) -> int:
    """The kept epoch of one phase: best on val (ties: earliest), or the last one by rule."""
    if cfg.selection == "best":
        return select(what, scores, val_set, log)
    last = max(scores)
    log.entries[what] = {
        "chosen": last,
        "on": "rule: the last epoch (no data used)",
        "metric": "top1",
        "score": scores[last],
        "scores": {str(k): v for k, v in scores.items()},
    }
    return last


# ----------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns. ``encoder`` / ``head`` hold the *selected* epoch's weights."""

    encoder: nn.Module
    head: PrototypeHead
    zeroshot_head: PrototypeHead
    zeroshot_encoder_state: dict[str, torch.Tensor] = field(repr=False)
    best_epoch: int  # 1-based
    best_val_top1: float
    val_top1: list[float]  # per epoch
    steps: int
    seconds: float  # training time, summed over the segments of a resumed run
    selection: SelectionLog
    config: TrainConfig
    f0_cache_epochs_read: int = 0  # epochs whose f0 answers came from the f0 cache
    f0_cache_epochs_written: int = 0
    # methods that train the text tower (FLYP, CLIP-LoRA): its selected and its starting state (the backend's
    # text tower is put back to the start after training, so encode_text stays the zero-shot one)
    text_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)
    zeroshot_text_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)


class _CSVLog:
    """``<run>/log.csv``; on resume, rows after the checkpoint's step are dropped first."""

    def __init__(self, path: Path, keep_until_step: int | None):
        self.path = path
        rows = []
        if keep_until_step is not None and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until_step]
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("w", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=LOG_COLUMNS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.fh.flush()

    def write(self, row: dict):
        self.writer.writerow(row)

    def flush(self):
        self.fh.flush()

    def close(self):
        self.fh.close()


def _tensorboard(run_dir: Path, enabled: bool):
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional, but asked for: say it is not used
        warnings.warn(
            "tensorboard is on but the tensorboard package is not installed, so nothing is logged to "
            f"{run_dir / 'tensorboard'}; pip install 'fdalign[tensorboard]' or turn tensorboard off",
            stacklevel=3,
        )
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _val_top1(encoder, head, split: EvalSplit, cfg: TrainConfig, device) -> float:
    from fdalign.eval.features import extract_features
    from fdalign.eval.metrics import topk_accuracy
    from fdalign.eval.pipeline import apply_head

    def score(ds: Dataset) -> float:
        feats, labels = extract_features(
            encoder,
            ds,
            batch_size=cfg.eval_batch_size,
            device=device,
            num_workers=0,
            precision=cfg.precision if device.type == "cuda" else "fp32",
            progress=False,
            desc="val",
        )
        return topk_accuracy(apply_head(head, feats), labels, ks=(1,))[1]

    return val_score(split, score)


@dataclass
class _Loop:
    """Everything one epoch of the batch loop reads or updates."""

    cfg: TrainConfig
    phase: Phase
    ft: nn.Module  # the encoder, wrapped in DDP under torchrun
    frozen: nn.Module | None
    head: PrototypeHead
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]
    settings: LossSettings
    spurious: torch.Tensor | None
    device: torch.device
    precision: str
    dist: distributed.DistInfo
    total_steps: int
    warmup: int
    log_rows: Callable[[dict], None]
    progress: bool
    total_epochs: int
    interrupts: _Interrupts | None = None
    n_encoder_params: int = 0  # params[:n] are the image encoder's (DDP averages them)
    step_head: Callable | None = None  # the loss's head when it is not ``head`` (CLIP-LoRA: text prototypes)
    extras: StepExtras | None = None  # what other methods need (text side, L2-SP's starting weights)


def _run_epoch(
    L: _Loop,
    views: SeededViews,
    epoch: int,
    step: int,
    phase_step: int,
    cached: torch.Tensor | None,
    fill: torch.Tensor | None,
) -> tuple[int, int]:
    """One pass over this rank's share of the epoch; returns the new ``(step, phase_step)``.

    ``cached`` ``[N, k]``: f0's log-probabilities read from the f0 cache (f0 is then not run);
    ``fill`` ``[N, k]``: where this epoch's f0 answers are written for the cache.
    """
    from tqdm.auto import tqdm

    from fdalign.eval.features import autocast_context

    cfg = L.cfg
    views.set_epoch(view_epoch(cfg, epoch))
    torch.manual_seed(augmentation_seed(cfg.seed, epoch))  # dropout in the main process
    sampler = distributed.GlobalBatchSampler(
        epoch_order(cfg.seed, epoch, len(views)), cfg.batch_size, L.dist.rank, L.dist.world
    )
    workers = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) ^ 0x5EED)
    loader = DataLoader(
        views, batch_sampler=sampler, generator=workers, num_workers=cfg.num_workers, pin_memory=L.device.type == "cuda"
    )
    bar = tqdm(
        loader,
        desc=f"{L.phase.name} epoch {epoch + 1}/{L.total_epochs}",
        disable=not L.progress,
        leave=False,
        dynamic_ncols=True,
    )
    t_prev = time.perf_counter()
    for b, (images, labels, idx) in enumerate(bar):
        lr = cosine_lr(phase_step, L.total_steps, L.warmup, L.phase.lr, cfg.min_lr)
        for grp in L.optimizer.param_groups:
            grp["lr"] = lr
        images = images.to(L.device, non_blocking=True)
        labels = torch.as_tensor(labels).to(L.device, non_blocking=True)
        log_p0 = cached[idx].to(L.device) if cached is not None else None
        with autocast_context(L.device, L.precision):
            extra = (L.extras,) if L.extras is not None else ()  # FD-Align's call stays the 8-argument one
            loss, parts = fdalign_forward(
                L.ft, L.frozen, L.step_head or L.head, images, labels, L.spurious, L.settings, log_p0, *extra
            )
        if not torch.isfinite(loss):
            raise FDAlignError(
                f"the loss became {loss.item()} at step {step + 1} (epoch {epoch + 1}); lower --lr "
                "(or use --precision bf16 / fp32 instead of fp16)"
            )
        if fill is not None:
            fill[idx] = parts["log_p0"].float().cpu()
        L.optimizer.zero_grad(set_to_none=True)
        L.scaler.scale(loss * sampler.weights[b] if L.dist.enabled else loss).backward()
        # the encoder's are DDP's; the head's and a trained text tower's are averaged here
        distributed.average_gradients(L.params[L.n_encoder_params :], L.dist)
        if cfg.grad_clip is not None:
            L.scaler.unscale_(L.optimizer)
            torch.nn.utils.clip_grad_norm_(L.params, cfg.grad_clip)
        L.scaler.step(L.optimizer)
        L.scaler.update()
        step, phase_step = step + 1, phase_step + 1
        now = time.perf_counter()
        ips = images.shape[0] * L.dist.world / max(now - t_prev, 1e-9)
        t_prev = now
        means = distributed.global_means(
            {"ce": parts["ce"].item(), "kl": parts["kl"].item(), "loss": loss.item()}, sampler.weights[b], L.dist
        )
        L.log_rows({"step": step, "epoch": epoch + 1, "lr": lr, **means, "images_per_s": round(ips, 2)})
        bar.set_postfix(ce=f"{means['ce']:.3f}", kl=f"{means['kl']:.4f}", lr=f"{lr:.2e}", img_s=f"{ips:.0f}")
        if L.interrupts is not None:
            L.interrupts.check()
    bar.close()
    return step, phase_step


def _f0_cache(
    cfg: TrainConfig,
    encoder: nn.Module,
    spurious,
    scale: float,
    normalize: bool,
    data_key: str | None,
    n: int,
    precision: str,
) -> F0Cache | None:
    """The f0 cache of this run, or None (off, or f0 not deterministic, or no data key)."""
    if not cfg.f0_cache or cfg.beta == 0 or spurious is None:
        return None
    if method_spec(cfg.method).regulariser not in ("spurious-kl", "logit-kd"):
        return None  # only a KL's f0 answers ([N, k] log-probabilities) are cached
    if cfg.f0_mode != "eval":
        warnings.warn("the f0 cache needs a deterministic f0 (--f0-mode eval); training without it", stacklevel=3)
        return None
    if data_key is None:
        warnings.warn(
            "the f0 cache needs a data_key naming the training images and their transform; training without it",
            stacklevel=3,
        )
        return None
    key, ingredients = f0_cache_key(
        f0_fingerprint=state_fingerprint(encoder),
        spurious=spurious,
        scale=scale,
        normalize_prototypes=normalize,
        seed=cfg.seed,
        data_key=data_key,
        precision=precision,
    )
    return F0Cache(cfg.f0_cache, key, ingredients, n, spurious.shape[0])


@dataclass
class _Progress:
    """What a checkpoint restores besides the weights: where training stands and the val history."""

    epoch: int = 0  # epochs finished
    step: int = 0
    val_hist: list[float] = field(default_factory=list)
    best_val: float = -1.0
    best_epoch: int = 0


def _resume(cfg: TrainConfig, run_dir: Path, chash: str, encoder: nn.Module, head: nn.Module):
    """``(progress, checkpoint or None)``; loads the checkpoint's weights and RNG state into place.

    Refuses a checkpoint made with other settings, and an existing one without ``--resume``.
    """
    ckpt_dir = run_dir / "checkpoint"
    if not (ckpt_dir / "last.safetensors").is_file():
        # last.json alone: killed while writing the first checkpoint, so no epoch was kept
        if cfg.resume or (ckpt_dir / "last.json").is_file():
            log.info("no checkpoint in %s: starting from scratch", ckpt_dir)
        return _Progress(), None
    if not cfg.resume:
        raise FDAlignError(
            f"{run_dir} already holds a training checkpoint; pass {option('resume', 'True')} to continue it or "
            f"choose a new {option('out')}"
        )
    ckpt = load_checkpoint(ckpt_dir)
    if ckpt.meta.get("config_hash") != chash:
        raise FDAlignError(
            f"cannot resume {run_dir}: its checkpoint was made with different settings "
            f"(config hash {ckpt.meta.get('config_hash')} vs {chash}); use the run's config.yaml or a new {option('out')}"
        )
    encoder.load_state_dict(ckpt.encoder)
    head.load_state_dict(ckpt.head)
    restore_rng(ckpt.rng_tensors, ckpt.meta.get("rng", {}))
    log.info("resuming %s after epoch %d (step %d)", run_dir, ckpt.epoch, ckpt.step)
    return _Progress(
        ckpt.epoch,
        ckpt.step,
        list(ckpt.meta["val_top1"]),
        float(ckpt.meta["best_val_top1"]),
        int(ckpt.meta["best_epoch"]),
    ), ckpt


def _phase_optimizer(
    cfg: TrainConfig, phase: Phase, encoder: nn.Module, head: nn.Module, text: nn.Module | None = None
):
    """``(named parameters, optimiser)`` of a phase: the head always learns, the encoder's ``--trainable``
    parameters if the phase trains it (the optimiser holds no state for frozen ones), and the text tower's
    (FLYP, CLIP-LoRA: the same ``--trainable`` rule) with the encoder. Order: encoder, text tower, head."""
    tspec = TrainableSpec.from_config(cfg)
    set_trainable(encoder, tspec, phase.train_encoder)
    named = [(f"head.{n}", p) for n, p in head.named_parameters()]
    if text is not None:
        set_trainable(text, tspec, phase.train_encoder)
        if phase.train_encoder:
            named = [(f"text.{n}", p) for n, p in text.named_parameters() if p.requires_grad] + named
    if phase.train_encoder:
        named = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad] + named
    if not named:
        raise FDAlignError(
            f"nothing to train in phase {phase.name}: the encoder is frozen and the head has no parameters"
        )
    return named, build_optimizer(cfg, param_groups(named, cfg.weight_decay, cfg.wd_skip_norm_bias), phase.lr)


def _text_side(backend, prototypes, spec: MethodSpec, device: torch.device) -> TextSide:
    """The trained text tower and the ``[C, T, L]`` tokens of every class's prompts: every template of the run
    (FLYP's captions and its classifier), or the method's one prompt (CLIP-LoRA)."""
    from fdalign.prompts import format_prompts

    tower = backend.text_tower
    if tower is None:
        raise FDAlignError(f"method {spec.name} trains the text tower, which {backend.name} does not expose")
    classnames = list(getattr(prototypes, "classnames", []) or [])
    if not classnames:
        raise FDAlignError(f"method {spec.name} needs the class names in the prototypes (build_prototypes gives them)")
    templates = [spec.prompt] if spec.prompt else list(prototypes.templates)
    tokens = backend.tokenize(format_prompts(classnames, templates))
    return TextSide(tower, tokens.reshape(len(classnames), len(templates), -1).to(device))


def _text_head_fn(text: TextSide, scale: float) -> Callable:
    """CLIP-LoRA's head in the loss: cosine to the class prototypes of the text tower as it is at this step."""
    from fdalign.losses import cosine_logits

    return lambda feats: cosine_logits(feats, text.prototypes(), scale)


def _refresh_text_head(head: PrototypeHead, text: TextSide) -> None:
    """Write the text tower's current class prototypes into the (frozen-kind) head that val, the model file,
    export and predict use."""
    was = text.tower.training
    text.tower.eval()
    with torch.no_grad():
        head.prototypes.copy_(text.prototypes().to(head.prototypes))
    text.tower.train(was)


def _load_selected(path: Path, chosen: int, encoder: nn.Module, head: nn.Module) -> None:
    """Put the selected epoch's weights (saved at that epoch's end) back into ``encoder`` and ``head``."""
    from fdalign.train.run import load_model

    saved = load_model(path)
    if int(saved.metadata.get("epoch", -1)) != chosen:
        raise RuntimeError(f"{path} holds epoch {saved.metadata.get('epoch')} but epoch {chosen} was selected")
    ref = encoder.state_dict()
    encoder.load_state_dict({k: v.to(ref[k].dtype) if v.is_floating_point() else v for k, v in saved.encoder.items()})
    head.load_state_dict(saved.head.state_dict())
    encoder.eval()
    head.eval()
    encoder.requires_grad_(False)


class _RunWriter:
    """What a run writes as it trains (rank 0 alone under torchrun): ``log.csv``, the selected model file,
    the resumable checkpoint, and the callbacks (:mod:`fdalign.callbacks`: the loggers and the user's)."""

    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        dist: distributed.DistInfo,
        keep_until_step: int | None,
        model_meta: dict,
        zeroshot_head: PrototypeHead,
        callbacks: CallbackList,
    ):
        self.run_dir, self.model_meta, self.zeroshot_head = run_dir, model_meta, zeroshot_head
        self.main = dist.is_main
        self.csv = _CSVLog(run_dir / "log.csv", keep_until_step) if self.main else None
        self.callbacks = callbacks if self.main else CallbackList()

    def row(self, row: dict) -> None:
        if self.csv is not None:
            self.csv.write(row)
        self.callbacks.on_step(row)

    def end_epoch(self, epoch: int, top1: float, keep: bool, encoder, head, optimizer, meta: dict) -> None:
        """``keep``: this epoch's weights become ``model/best.safetensors`` (the selection's candidate)."""
        from fdalign.train.run import MODEL_FILE, save_model

        if not self.main:
            return
        if keep:
            # an adapted encoder is saved merged (the base model's keys: eval, predict and export load it
            # without peft), its adapters beside it (export --adapter-only)
            lora = has_adapters(encoder)
            save_model(
                self.run_dir / MODEL_FILE,
                merge_adapters(encoder) if lora else encoder,
                head,
                self.zeroshot_head,
                dict(self.model_meta, epoch=epoch, val_top1=top1),
                adapter=adapter_state_dict(encoder) if lora else None,
            )
        self.csv.flush()
        save_checkpoint(self.run_dir / "checkpoint", encoder=encoder, head=head, optimizer=optimizer, meta=meta)

    def close(self) -> None:
        if self.csv is not None:
            self.csv.close()


class _Interrupts:
    """Ctrl-C that cannot be lost: the handler records it before raising, and :meth:`check` raises again
    at the next batch or epoch boundary. A KeyboardInterrupt raised inside code that swallows it (Python's
    fork handlers, when a DataLoader starts its workers: "Exception ignored in: _releaseLock") would
    otherwise let the run finish and exit 0."""

    def __init__(self):
        self.hit = False
        self.previous = None

    def __enter__(self):
        import signal
        import threading

        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.hit = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.hit:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


def check_finite_weights(encoder: nn.Module, head: nn.Module, epoch: int, lr: float) -> None:
    """A diverged model must stop the run, not be validated, selected and reported (NaN logits)."""
    for what, module in (("encoder", encoder), ("head", head)):
        for name, p in module.named_parameters():
            if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                raise FDAlignError(
                    f"training diverged: the {what} weight {name} holds NaN or inf after epoch {epoch} "
                    f"(peak lr {lr:g}); lower --lr, set a finite --grad-clip, or use --precision fp32"
                )


def train(
    backend,
    train_set: Dataset,
    val_set: Dataset | EvalSplit,
    prototypes,
    config: TrainConfig,
    run_dir: str | os.PathLike,
    progress: bool = True,
    on_epoch_end: Callable[[int, float], None] | None = None,
    data_key: str | None = None,
    callbacks: Sequence[Any] | CallbackList = (),
) -> TrainResult:
    """Fine-tune ``backend.image_encoder`` (in place) and return the selected weights.

    Args:
        backend: a :class:`~fdalign.backends.base.CLIPBackend`.
        train_set: yields ``(augmented image [3,H,W], label)``; its transform must draw randomness
            from torch's RNG (the view of image ``i`` in epoch ``e`` is then a function of
            ``(seed, e, i)``: :class:`~fdalign.data.views.SeededViews`).
        val_set: the validation set (an :class:`EvalSplit` with role ``"val"``, or a dataset taken
            to be one); the only data any choice is made on.
        prototypes: :class:`~fdalign.prototypes.Prototypes` (class + spurious / corrected).
        config: the run's settings (``batch_size`` 0 / ``lr_per_256`` are resolved here).
        run_dir: where ``log.csv``, ``checkpoint/``, ``model/best.safetensors`` and
            ``selection.json`` go (written by rank 0 only under torchrun).
        progress: tqdm bars (also needs ``config.progress``).
        on_epoch_end: called as ``on_epoch_end(epoch (1-based), val_top1)`` after the epoch's
            checkpoint is written (tests use it to simulate a kill).
        data_key: names the training images and their transform (e.g. the split's content hash
            and the augmentation settings); with ``config.f0_cache`` it keys the f0 cache.
        callbacks: objects with ``on_step(metrics)`` / ``on_epoch_end(metrics)`` (:mod:`fdalign.callbacks`);
            rank 0 calls them. ``on_end`` is the workflow's to call, with the evaluated run.
    """
    from fdalign.io import run_lock

    with run_lock(run_dir), _Interrupts() as interrupts:  # one process per run directory
        result = _train(
            backend,
            train_set,
            val_set,
            prototypes,
            config,
            Path(run_dir),
            progress,
            on_epoch_end,
            data_key,
            interrupts,
            CallbackList(callbacks),
        )
        interrupts.check()  # a Ctrl-C lost during the last epoch's validation still stops the caller
        return result


def _train(
    backend,
    train_set,
    val_set,
    prototypes,
    config: TrainConfig,
    run_dir: Path,
    progress: bool,
    on_epoch_end,
    data_key,
    interrupts: _Interrupts,
    callbacks: CallbackList,
) -> TrainResult:
    from fdalign.train.run import MODEL_FILE, SELECTION_FILE, load_model, record_model_hash

    cfg = config.resolved(len(train_set)).validate()
    dist = distributed.current()
    run_dir.mkdir(parents=True, exist_ok=True)
    progress = progress and cfg.progress and dist.is_main
    if not isinstance(val_set, EvalSplit):
        val_set = EvalSplit(val_set, "val", f"val ({len(val_set)} images)")
    if len(val_set.dataset) == 0:
        raise FDAlignError("the validation set is empty; every selection needs at least one val image")

    device = distributed.rank_device(resolve_device(cfg.device), dist)
    precision = cfg.precision
    if precision != "fp32" and device.type != "cuda":
        warnings.warn(f"precision {precision} is only used on CUDA; training in fp32 on {device}", stacklevel=2)
        precision = "fp32"

    scale = float(cfg.temperature if cfg.temperature is not None else backend.logit_scale)
    spec = method_spec(cfg.method)
    spurious = prototypes.corrected_prototypes if cfg.spc else prototypes.spurious_prototypes
    if cfg.spc and spurious is None:
        raise FDAlignError(
            "config asks for SPC but the prototypes have no corrected_prototypes; build them with spc=SPCConfig(...)"
        )
    normalize_spurious = not (cfg.spc and not cfg.spc_renormalize)
    if spec.regulariser == "logit-kd":  # the same KL on the class distribution: f0's answers over the classes
        spurious, normalize_spurious = prototypes.class_prototypes, True
    plan = phases(cfg)
    total_epochs = plan[-1].stop

    backend.to(device)
    encoder = backend.image_encoder
    head = PrototypeHead(prototypes.class_prototypes, scale, trainable=cfg.head_trainable).to(device)
    zeroshot_head = copy.deepcopy(head)
    zeroshot_encoder_state = _state_cpu(encoder)  # also L2-SP's theta0: taken before any step or checkpoint
    text = _text_side(backend, prototypes, spec, device) if spec.text_learns else None
    zeroshot_text_state = _state_cpu(text.tower) if text is not None else None
    kept_text_state = None
    tspec = TrainableSpec.from_config(cfg)
    # f_0 must be the *pretrained* encoder, so it is copied (and fingerprinted) before any checkpoint is loaded;
    # with LoRA it is the encoder itself with its adapters off, in the encoder's own precision
    dtype_0 = None if tspec.kind == "lora" else f0_dtype(cfg, device)
    if tspec.kind == "lora" and cfg.f0_precision == "bf16":
        warnings.warn("--f0-precision bf16 is ignored with --trainable lora: f0 is the encoder itself", stacklevel=2)
    f0cache = _f0_cache(
        cfg,
        encoder,
        spurious,
        scale,
        normalize_spurious,
        data_key,
        len(train_set),
        f"{precision}, f0 {dtype_0 or 'as the encoder'}",
    )  # fingerprinted before the adapters exist: a LoRA run shares f0's answers with a full one
    apply_trainable(encoder, tspec, seed=epoch_seed(cfg.seed, -1))  # the adapters' start depends on the seed alone
    if text is not None:  # CLIP-LoRA: the text tower gets the same kind of adapters (its own seed)
        apply_trainable(text.tower, tspec, seed=epoch_seed(cfg.seed, -2))
    frozen = _frozen_copy(encoder, cfg.f0_mode, dtype_0) if any(p.use_kl for p in plan) else None
    if cfg.grad_checkpointing and not backend.set_grad_checkpointing(True):
        warnings.warn(
            f"{getattr(backend, 'name', 'this model')} does not support gradient checkpointing; training without it",
            stacklevel=2,
        )
    spurious_dev = spurious.to(device) if spurious is not None else None

    # ---- resume -----------------------------------------------------------------------------
    chash = config_hash(cfg)
    state, ckpt = _resume(cfg, run_dir, chash, encoder, head)
    # training time of the segments before a resume (up to their last checkpoint): metrics.json sums them
    seconds_before = float(ckpt.meta.get("train_seconds", 0.0)) if ckpt is not None else 0.0
    if text is not None and ckpt is not None:
        raise FDAlignError(
            f"cannot resume {run_dir}: method {cfg.method} trains the text tower, which its checkpoint does not "
            "hold; train it again with a new --out"
        )
    start_epoch, step, val_hist, best_val, best_epoch = (
        state.epoch,
        state.step,
        state.val_hist,
        state.best_val,
        state.best_epoch,
    )
    distributed.barrier(dist)  # every rank has read the checkpoint before rank 0 writes a new one

    model_meta = {
        "classnames": list(getattr(prototypes, "classnames", []) or []),
        "base_fingerprint": str(getattr(backend, "fingerprint", "")),
        "model": cfg.model,
        "pretrained": cfg.pretrained,
        "model_config": cfg.model_config,
        "mode": cfg.mode,
    }
    if tspec.kind != "full":
        model_meta["trainable"] = tspec.to_dict()
    writer = _RunWriter(run_dir, cfg, dist, step if ckpt is not None else None, model_meta, zeroshot_head, callbacks)
    selection = SelectionLog()
    t_start = time.time()
    use_scaler = precision == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    views = SeededViews(train_set, cfg.seed)

    try:
        for phase in plan:
            if start_epoch >= phase.stop:
                continue
            # ---- phase set-up: which parameters learn, the optimiser and its schedule -----------
            towers = {"text": text.tower} if text is not None else {}  # (text only when trained: spies take 4 args)
            named, optimizer = _phase_optimizer(cfg, phase, encoder, head, **towers)
            n_enc = sum(1 for n, _ in named if not n.startswith(("text.", "head.")))
            extras = StepExtras(text=text) if text is not None or spec.regulariser == "l2-sp" else None
            if spec.regulariser == "l2-sp":  # theta0 = the pretrained weights, never a later state
                extras.params = [p for _, p in named[:n_enc]]
                extras.start = [zeroshot_encoder_state[n].to(device) for n, _ in named[:n_enc]]
            steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
            total_steps = steps_per_epoch * (phase.stop - phase.start)
            warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_epochs * steps_per_epoch)
            if phase.name == "fdalign" and phase.start > 0 and start_epoch == phase.start:
                # lp-ft as released: FD-Align starts from the probe's best-on-val head (their checkpoint
                # callback's file), not its last epoch, and only FD-Align epochs compete for selection
                head.load_state_dict(load_model(run_dir / MODEL_FILE).head.state_dict())
                best_val, best_epoch = -1.0, 0
            if (
                ckpt is not None
                and ckpt.meta.get("phase") == phase.name
                and ckpt.optimizer is not None
                and start_epoch > phase.start
            ):
                optimizer.load_state_dict(ckpt.optimizer)
                if ckpt.meta.get("scaler"):
                    scaler.load_state_dict(ckpt.meta["scaler"])
            loop = _Loop(
                cfg=cfg,
                phase=phase,
                frozen=frozen,
                head=head,
                optimizer=optimizer,
                scaler=scaler,
                ft=distributed.wrap_for_training(encoder, dist) if phase.train_encoder else encoder,
                params=[p for _, p in named],
                n_encoder_params=n_enc if dist.enabled and phase.train_encoder else 0,
                extras=extras,
                step_head=_text_head_fn(text, scale) if spec.prototypes_each_step else None,
                spurious=spurious_dev,
                device=device,
                precision=precision,
                dist=dist,
                settings=LossSettings(
                    alpha=cfg.alpha if phase.name == "fdalign" else 1.0,
                    beta=cfg.beta if phase.train_encoder else 0.0,  # every regulariser, not only a KL
                    scale=scale,
                    direction=cfg.kl_direction,
                    normalize_prototypes=normalize_spurious,
                    train_encoder=phase.train_encoder,
                    regulariser=spec.regulariser,
                    objective=spec.objective,
                ),
                total_steps=total_steps,
                warmup=min(warmup, total_steps),
                log_rows=writer.row,
                progress=progress,
                total_epochs=total_epochs,
                interrupts=interrupts,
            )

            for epoch in range(max(start_epoch, phase.start), phase.stop):
                encoder.train(phase.train_encoder)  # a frozen encoder extracts features as at test time
                if frozen is not None:
                    set_frozen_mode(frozen, cfg.f0_mode)
                head.train()
                if text is not None:
                    text.tower.train(phase.train_encoder)
                    # which template captions each image (FLYP): a function of (seed, epoch) only
                    text.generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch) ^ 0x7E47)
                cache_on = f0cache is not None and phase.use_kl
                cached = f0cache.load(view_epoch(cfg, epoch)) if cache_on else None
                fill = (
                    torch.full((len(views), spurious.shape[0]), float("nan")) if cache_on and cached is None else None
                )
                step, phase_step = _run_epoch(
                    loop, views, epoch, step, (epoch - phase.start) * steps_per_epoch, cached, fill
                )
                if fill is not None:
                    fill, done = distributed.merge_rows(fill, ~torch.isnan(fill[:, 0]), dist)
                    if dist.is_main and bool(done.all()):
                        f0cache.save(view_epoch(cfg, epoch), fill)

                # ---- end of epoch: validate, keep the best, checkpoint ---------------------------
                if text is not None:  # the classifier is the trained text tower's prototypes
                    _refresh_text_head(head, text)
                check_finite_weights(encoder, head, epoch + 1, phase.lr)
                top1 = _val_top1(encoder, head, val_set, cfg, device)
                val_hist.append(top1)
                improved = top1 > best_val  # strict: ties keep the earlier epoch, as select() does
                if improved:
                    best_val, best_epoch = top1, epoch + 1
                keep = (improved and cfg.selection == "best") or cfg.selection == "last"
                if keep and text is not None:  # merged: WiSE-FT of LoRA = interpolating merged weights
                    kept_text_state = _state_cpu(merge_adapters(text.tower) if has_adapters(text.tower) else text.tower)
                writer.end_epoch(
                    epoch + 1,
                    top1,
                    keep,
                    encoder,
                    head,
                    optimizer,
                    meta={
                        "epoch": epoch + 1,
                        "step": step,
                        "phase": phase.name,
                        "config_hash": chash,
                        "train_seconds": round(seconds_before + time.time() - t_start, 3),
                        "val_top1": val_hist,
                        "best_val_top1": best_val,
                        "best_epoch": best_epoch,
                        "scheduler": {
                            "phase": phase.name,
                            "phase_step": phase_step,
                            "total_steps": total_steps,
                            "warmup_steps": loop.warmup,
                            "base_lr": phase.lr,
                            "min_lr": cfg.min_lr,
                        },
                        "scaler": scaler.state_dict() if use_scaler else None,
                    },
                )
                distributed.barrier(dist)
                writer.callbacks.on_epoch_end(
                    {
                        "epoch": epoch + 1,
                        "epochs": total_epochs,
                        "phase": phase.name,
                        "val_top1": top1,
                        "best_val_top1": best_val,
                        "best_epoch": best_epoch,
                        "step": step,
                    }
                )
                if progress:
                    from tqdm.auto import tqdm

                    tqdm.write(
                        f"epoch {epoch + 1}/{total_epochs}: val top-1 {top1:.2f}%" + ("  (best)" if improved else "")
                    )
                if on_epoch_end is not None:
                    on_epoch_end(epoch + 1, top1)
                interrupts.check()
            start_epoch = phase.stop
    finally:
        writer.close()

    # ---- the selection, recorded, and the chosen weights loaded back -------------------------
    for ph in plan:
        what = "epoch" if ph is plan[-1] else "lp_epoch"  # lp-ft: the probe's epoch, then FD-Align's
        chosen = _select_epoch(what, {e + 1: val_hist[e] for e in range(ph.start, ph.stop)}, cfg, val_set, selection)
    if dist.is_main:
        selection.save(run_dir / SELECTION_FILE)
    distributed.barrier(dist)
    scores = {e + 1: v for e, v in enumerate(val_hist)}
    if has_adapters(encoder):  # the backend's encoder becomes a plain module again; the model file is merged
        merge_adapters(encoder, inplace=True)
    _load_selected(run_dir / MODEL_FILE, chosen, encoder, head)
    if text is not None:  # the backend's text tower back to where it started; the selected state is returned
        if has_adapters(text.tower):
            merge_adapters(text.tower, inplace=True)
        text.tower.load_state_dict(zeroshot_text_state)
        text.tower.requires_grad_(False)
        text.tower.eval()
    if dist.is_main:
        record_model_hash(run_dir)
        if f0cache is not None and f0cache.hits + f0cache.misses:
            import sys

            print(f0cache.report(), file=sys.stderr)
            log.info(f0cache.report())
    return TrainResult(
        encoder=encoder,
        head=head,
        zeroshot_head=zeroshot_head,
        zeroshot_encoder_state=zeroshot_encoder_state,
        best_epoch=int(chosen),
        best_val_top1=float(scores[chosen]),
        val_top1=val_hist,
        steps=step,
        seconds=seconds_before + time.time() - t_start,
        selection=selection,
        config=cfg,
        f0_cache_epochs_read=f0cache.hits if f0cache else 0,
        f0_cache_epochs_written=f0cache.writes if f0cache else 0,
        text_state=kept_text_state,
        zeroshot_text_state=zeroshot_text_state,
    )


__all__ = [
    "train",
    "TrainResult",
    "cosine_lr",
    "epoch_seed",
    "augmentation_seed",
    "epoch_order",
    "phases",
    "Phase",
    "resolve_device",
    "config_hash",
]
