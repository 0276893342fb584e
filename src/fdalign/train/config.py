"""Every option of a training run, as one dataclass.

The same :class:`TrainConfig` is filled from (lowest precedence first) its defaults, an optional
preset (``released``: the authors' settings), a YAML file and command-line flags; the resolved
config is saved as ``<run>/config.yaml`` and is all that is needed to repeat the run.

Defaults are what an open_clip user would expect for few-shot fine-tuning of a whole CLIP image
tower (AdamW, small LR, decoupled weight decay off norms/biases, cosine schedule with a short
warm-up); :meth:`TrainConfig.released` gives the authors' published recipe instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdalign.data.names import dataset_key as _dataset_key  # noqa: F401 (re-exported)
from fdalign.data.names import guess_dataset_name
from fdalign.errors import FDAlignError
from fdalign.options import (
    FLOAT32_MAX,
    ConfigFile,
    add_arguments,
    beyond_float32,
    check_choices,
    document_fields,
    option,
)
from fdalign.train.methods import METHODS, SPURIOUS_KINDS, method_spec

MODES = ("fdalign", "linear-probe", "lp-ft")
HEADS = ("frozen", "trainable")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
KL_DIRECTIONS = ("paper", "released")
SELECTIONS = ("best", "last")
LOGGERS = ("tensorboard", "wandb", "mlflow")  # fdalign.loggers (which imports the libraries)
# Fields that change neither the maths nor the data order: they may differ between a run and its resume
# (data paths may move; the CLI compares the K-shot images' hashes instead).
NON_SEMANTIC_FIELDS = frozenset(
    {
        "resume",
        "progress",
        "num_workers",
        "eval_batch_size",
        "tensorboard",
        "logger",
        "out",
        "device",
        "ood",
        "target",
        "target_templates",
        "wiseft_alphas",
        "verify_images",
        "data",
        "image_root",
        "dataset_name",
        "f0_cache",
    }
)


# Keys every run's config.yaml has held since the first release, from its first lines to its last
# ones: a file that lacks one was cut short (a config written whole lists every field).
RUN_CONFIG_KEYS = ("model", "data", "shots", "seed", "wiseft_alphas", "ood", "out")

_f = option  # every field below is an option: a default, its --help text, its choices


@dataclass
class ModelOptions(ConfigFile):
    """The CLIP model a run starts from: the first options of :class:`TrainConfig` and of
    :class:`fdalign.train.meta_config.MetaConfig`."""

    model: str | None = _f(
        None, "CLIP model: an open_clip name (ViT-B-32), 'hf:<repo or dir>', or a name used with --model-config"
    )
    pretrained: str | None = _f(None, "open_clip pretrained tag (e.g. openai) or a checkpoint file")
    model_config: str | None = _f(None, "open_clip model-config JSON for a custom architecture")


@dataclass
class TrainConfig(ModelOptions):
    """A training run. Field help texts double as ``fdalign train --help``."""

    # --- data (the model options come first, from ModelOptions) ---------------------------------
    data: str | None = _f(
        None, "data: an ImageFolder root (train/ [val/] [test/]), a CSV manifest or a CoOp split_zhou_*.json"
    )
    image_root: str | None = _f(None, "image folder the paths of a JSON split are relative to")
    classnames: str | None = _f(
        None,
        "class names overriding folder names: a text file with one name per line "
        "in label order (sorted folders), or 'folder<TAB>name' lines, or 'imagenet' "
        "(CLIP's / CoOp's 1000 ImageNet names by wnid: ImageNet needs it)",
    )
    dataset_name: str | None = _f(
        None, "data set name for reports and '--preset released' LR tables (default: guessed from --data)"
    )
    shots: int = _f(16, "K: training images per class (sampled with --seed)")
    seed: int = _f(1, "seed of the K-shot sample, the data order and the augmentations")
    templates: str = _f(
        "openai80", "prompt templates: a built-in set (openai80, tip7) or a text file, one template with '{}' per line"
    )
    split_file: str | None = _f(
        None,
        "with --data indices/<ds>/shot_K-seed_S.json: the CoOp split_zhou_*.json its "
        "indices point into, whose test list is the ID test split (default: found beside "
        "the index file or --image-root); for ImageNet a folder whose val/ is the test set",
    )
    base_classes: str | None = _f(
        None,
        "base-to-novel: 'first-half' (the first ceil(n/2) classes in label order, "
        "CoCoOp's convention) or a file naming the base classes, one per line; train and "
        "select on the base classes only, report base test and novel test, each scored "
        "with its own classes' prototypes",
    )

    # --- the method -------------------------------------------------------------------------------
    mode: str = _f(
        "fdalign",
        "fdalign: train encoder (+head); linear-probe: encoder frozen, head only, CE; "
        "lp-ft: linear probe for --lp-epochs, then fdalign",
        choices=MODES,
    )
    method: str = _f(
        "fd-align",
        "the loss and what learns (docs/methods.md): fd-align (CE + beta * spurious KL), fine-tune "
        "(beta 0), linear-probe, lp-ft, logit-kd (beta * KL on the class distribution), feature-kd "
        "(beta * (1 - cos(ft, f0))), l2-sp (beta * ||theta - theta0||^2), flyp (both towers, "
        "contrastive on captions), clip-lora (LoRA on both towers); beta weighs every regulariser",
        choices=tuple(METHODS),
    )
    spurious: str = _f(
        "real",
        "FD-Align ablation: the spurious prototypes from the templates (real), from templates with the "
        "class names permuted across templates (shuffled), or random unit vectors of the same count (random)",
        choices=SPURIOUS_KINDS,
    )
    alpha: float = _f(1.0, "weight of the classification (cross-entropy) loss")
    beta: float = _f(
        1.0,
        "weight of the spurious-feature KL loss; 0 = plain full fine-tuning (the frozen "
        "encoder is not even run). Units follow --kl-direction: with 'paper' beta multiplies a "
        "per-image KL; 'released' divides it by k, so the authors' beta 20 with k = 20 "
        "corrected prototypes is beta 1 in paper units (beta_paper = beta_released / k)",
    )
    kl_direction: str = _f(
        "paper",
        "paper: KL(P_t||P_0) per image; released: the authors' KLDivLoss "
        "(KL(P_0||P_t)/k, averaged over the k spurious prototypes too)",
        choices=KL_DIRECTIONS,
    )
    temperature: float | None = _f(
        None, "logit scale of the head and of the spurious distribution (default: the model's logit_scale)"
    )
    spc: bool = _f(True, "Spurious Prototype Correction: IsolationForest + KMeans over the template prototypes")
    spc_keep: int = _f(60, "SPC: templates kept by the IsolationForest")
    spc_k: int = _f(20, "SPC: KMeans centres (corrected spurious prototypes)")
    spc_seed: int = _f(0, "SPC: random_state of IsolationForest and KMeans")
    spc_renormalize: bool = _f(
        True,
        "SPC: L2-normalise the KMeans centres; without it the raw centres are "
        "used unnormalised in the KL (as released)",
    )
    head: str = _f(
        "frozen",
        "frozen: zero-shot prototypes (paper); trainable: linear head initialised from "
        "them with a bias (released code); linear-probe/lp-ft always train the head",
        choices=HEADS,
    )
    f0_mode: str = _f(
        "eval",
        "module mode of the frozen encoder f0: eval (deterministic: no dropout, BatchNorm "
        "running stats) or released (train mode, as the authors' code runs it; matters for "
        "dropout/BatchNorm backbones such as RN50)",
        choices=("eval", "released"),
    )

    f0_precision: str = _f(
        "auto",
        "precision of the frozen encoder f0 (its features only feed a softmax over "
        "the spurious prototypes): auto = bf16 on CUDA (untested on a GPU so far), fp32 on CPU",
        choices=("auto", "fp32", "bf16"),
    )
    view_cycle: int = _f(
        0,
        "0: fresh augmented views every epoch; V > 0: epoch e re-uses the views of epoch "
        "e mod V (a fixed set of V views per image, so the f0 cache holds V epochs)",
    )
    f0_cache: str | None = _f(
        None,
        "folder for the f0 cache: f0's spurious distributions of every augmented "
        "view, stored by the first run and read by every later run with the same seed, "
        "data, transform, f0 weights and prototypes (sweeps over alpha, beta, lr...); "
        "the results are bitwise the same as without it",
    )

    # --- what learns ------------------------------------------------------------------------------
    trainable: str = _f(
        "full",
        "which encoder parameters learn: full; lora (peft low-rank adapters; f0 is the same encoder with "
        "its adapters off, no second copy); last-blocks:N (the last N transformer blocks + final norm and "
        "projection); layernorm; bias; projection (the final projection only)",
    )
    lora_rank: int = _f(8, "LoRA rank r (with --trainable lora)")
    lora_alpha: float = _f(16.0, "LoRA alpha: the update B A is scaled by alpha / r (with --trainable lora)")
    lora_dropout: float = _f(
        0.0, "dropout on the LoRA input (not applied inside open_clip's fused attention, which peft merges)"
    )
    lora_targets: str = _f(
        "attn",
        "layers LoRA adapts, comma-separated: attn (q/k/v + output projections), qkv, mlp, or layer names (e.g. c_fc)",
    )

    # --- optimisation ---------------------------------------------------------------------------
    optimizer: str = _f("adamw", "optimiser", choices=OPTIMIZERS)
    lr: float = _f(1e-5, "peak learning rate (per 256 images if --lr-per-256)")
    lp_lr: float = _f(1e-3, "learning rate of the linear-probe phase (mode linear-probe, or the first phase of lp-ft)")
    lr_per_256: bool = _f(False, "--lr and --lp-lr are per 256 images: multiply them by batch/256")
    weight_decay: float = _f(0.1, "weight decay (decoupled for adamw)")
    wd_skip_norm_bias: bool = _f(
        True, "no weight decay on biases, norm gains and other 1-D parameters (open_clip's convention)"
    )
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(True, "SGD Nesterov momentum")
    adam_betas: list[float] = _f([0.9, 0.98], "AdamW betas (CLIP's)")
    adam_eps: float = _f(1e-6, "AdamW epsilon (CLIP's)")
    epochs: int = _f(10, "training epochs (of the fdalign phase for lp-ft)")
    lp_epochs: int = _f(10, "linear-probe epochs (mode linear-probe uses --epochs)")
    batch_size: int = _f(32, "training batch size; 0 = min(number of training images, 256) as released")
    warmup_epochs: float = _f(1.0, "linear LR warm-up length in epochs (ignored if --warmup-steps is set)")
    warmup_steps: int | None = _f(None, "linear LR warm-up length in optimiser steps")
    min_lr: float = _f(0.0, "learning rate at the end of the cosine schedule")
    grad_clip: float | None = _f(None, "clip the gradient norm to this value (default: no clipping)")
    crop_scale: list[float] = _f([0.5, 1.0], "RandomResizedCrop area range (released: 0.08 1.0)")
    hflip: bool = _f(True, "random horizontal flips (released: off)")
    selection: str = _f(
        "best", "best: keep the epoch with the best val top-1; last: keep the last epoch", choices=SELECTIONS
    )

    # --- hardware -------------------------------------------------------------------------------
    precision: str = _f("fp32", "autocast precision on CUDA (bf16/fp16); CPU always runs fp32", choices=PRECISIONS)
    grad_checkpointing: bool = _f(False, "gradient checkpointing in the image tower (less memory, slower)")
    device: str = _f("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    num_workers: int = _f(
        min(4, os.cpu_count() or 1), "DataLoader worker processes (default: up to 4, at most the CPU count)"
    )

    # --- evaluation and output ------------------------------------------------------------------
    wiseft_alphas: list[float] = _f(
        [0.0, 0.25, 0.5, 0.75, 1.0],
        "WiSE-FT mixing weights to evaluate (0 = zero-shot, 1 = fine-tuned); the best on val is recorded",
    )
    ood: list[str] = _f(
        [],
        "out-of-distribution sets NAME=PATH[:subset] (repeatable), mapped to the ID classes by "
        "wnid / name (V2: folder k = class k); a set lacking ID classes warns unless ':subset' or "
        "named a, r, imagenet-a, imagenet-r",
    )
    target: list[str] = _f(
        [],
        "cross-data-set targets NAME=PATH (repeatable): data sets evaluated with the "
        "fine-tuned encoder and their OWN class names (their test split, or the folder's "
        "classes), never used to select anything",
    )
    target_templates: list[str] = _f(
        [],
        "NAME=TEMPLATES: prompt templates of a --target (a built-in set or a "
        "file); a target not named here uses --templates",
    )
    eval_batch_size: int = _f(256, "batch size for feature extraction")
    verify_images: bool = _f(True, "open every few-shot image before training and fail on unreadable ones")
    out: str | None = _f(None, "run directory (created); holds config.yaml, splits/, model/, metrics.json, report.md")
    resume: bool = _f(False, "continue from <out>/checkpoint/last.* (same config) instead of starting over")
    progress: bool = _f(
        True, "show progress: bars on a terminal, else one line per epoch and per evaluated set (log files, Slurm)"
    )
    logger: list[str] = _f(
        [],
        "experiment trackers, any of tensorboard (<out>/tensorboard), wandb (WANDB_MODE=offline keeps it local), "
        "mlflow (MLFLOW_TRACKING_URI, else <out>/mlflow.db); each needs its extra: pip install 'fdalign[wandb]'",
    )
    tensorboard: bool = _f(
        False,
        "same as --logger tensorboard (kept for older configs); without the tensorboard package it warns",
    )

    # ------------------------------------------------------------------------------------------
    def validate(self, source: str = "the config") -> TrainConfig:
        """Check ranges and choices; raises :class:`FDAlignError` naming the field. Returns self."""

        def bad(name, why):
            raise FDAlignError(f"{source}: {name} = {getattr(self, name)!r} {why}")

        check_choices(self, source)
        if self.shots < 1:
            bad("shots", "must be >= 1")
        # epochs first, so that 0 and -2 get the same limit
        if self.epochs < 1:
            bad("epochs", "must be >= 1")
        if self.mode == "lp-ft" and self.lp_epochs < 1:
            bad("lp_epochs", "must be >= 1 for mode lp-ft")
        for name in ("epochs", "lp_epochs", "batch_size", "num_workers", "spc_keep", "spc_k", "view_cycle"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.eval_batch_size < 1:
            bad("eval_batch_size", "must be >= 1")
        for name in (
            "lr",
            "lp_lr",
            "weight_decay",
            "momentum",
            "min_lr",
            "alpha",
            "beta",
            "warmup_epochs",
            "temperature",
            "grad_clip",
        ):
            v = getattr(self, name)
            if v is not None and math.isnan(v):  # nan passes every range test below (inf is a legal, if wild, value)
                bad(name, "is not a number; give a number")
            if beyond_float32(v):
                bad(name, f"is beyond what float32 holds ({FLOAT32_MAX:.1e}), in which torch computes it")
        for name in ("lr", "lp_lr", "weight_decay", "momentum", "min_lr", "alpha", "beta", "warmup_epochs"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.temperature is not None and self.temperature <= 0:
            bad("temperature", "must be > 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            bad("grad_clip", "must be > 0 (omit it for no clipping)")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            bad("crop_scale", "must be two numbers 0 < lo <= hi <= 1")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad("adam_betas", "must be two numbers in [0, 1)")
        if not self.wiseft_alphas or not all(0 <= a <= 1 for a in self.wiseft_alphas):
            bad("wiseft_alphas", "must be one or more numbers in [0, 1]")
        from fdalign.train.trainable import TrainableSpec

        TrainableSpec.from_config(self, source)  # one-line errors naming the field
        for name in self.logger:
            if name not in LOGGERS:
                bad("logger", f"has {name!r}; choose from {', '.join(LOGGERS)}")
        for spec in self.ood:
            if "=" not in spec or not spec.split("=", 1)[0] or not spec.split("=", 1)[1]:
                bad("ood", f"has {spec!r}; write each OOD set as NAME=PATH")
        for name in ("target", "target_templates"):
            for spec in getattr(self, name):
                if "=" not in spec or not spec.split("=", 1)[0] or not spec.split("=", 1)[1]:
                    bad(name, f"has {spec!r}; write each as NAME=PATH")
        return self

    @property
    def head_trainable(self) -> bool:
        """Linear probing needs a trainable head whatever ``head`` says."""
        return self.head == "trainable" or self.mode in ("linear-probe", "lp-ft")

    def warmup_warning(self) -> str | None:
        """What to say when the LR warm-up lasts a whole phase (``epochs=1`` with the default 1 epoch of
        warm-up): the LR then only rises and never decays, which no one asks for on purpose."""
        return warmup_warning(self.mode, self.epochs, self.lp_epochs, self.warmup_epochs, self.warmup_steps)

    @property
    def total_epochs(self) -> int:
        return self.lp_epochs + self.epochs if self.mode == "lp-ft" else self.epochs

    def resolved(self, num_train: int) -> TrainConfig:
        """Turn data-dependent settings into numbers: ``batch_size=0`` and ``lr_per_256``."""
        if num_train < 1:
            raise FDAlignError("the training set is empty")
        c = dataclasses.replace(
            self,
            adam_betas=list(self.adam_betas),
            crop_scale=list(self.crop_scale),
            wiseft_alphas=list(self.wiseft_alphas),
            ood=list(self.ood),
            target=list(self.target),
            target_templates=list(self.target_templates),
            logger=list(self.logger),
        )
        for name, value in method_spec(c.method).fixed.items():  # fine-tune: beta 0; l2-sp: no weight decay
            setattr(c, name, value)
        if c.batch_size == 0:
            c.batch_size = min(num_train, 256)
        if c.lr_per_256:
            c.lr = c.lr * c.batch_size / 256
            c.lp_lr = c.lp_lr * c.batch_size / 256
            c.lr_per_256 = False
        return c

    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_run_yaml(cls, path: str | os.PathLike) -> TrainConfig:
        """A run's own ``config.yaml``, which ``fdalign train`` writes whole: an empty file, or one cut short
        (lacking keys every run writes, such as ``ood``, which would drop OOD sets without a word), is an
        error naming the file rather than a config filled in with defaults."""
        from fdalign.options import read_yaml

        path = Path(path)
        fix = "restore it from a copy, or train the run again"
        d = read_yaml(path, "run config")
        if d is None:
            raise FDAlignError(f"run config {path} is empty; {fix}")
        if not isinstance(d, dict):
            raise FDAlignError(f"run config {path} must be a mapping of option: value, got {type(d).__name__}; {fix}")
        lost = [k for k in RUN_CONFIG_KEYS if k not in d]
        if lost:
            raise FDAlignError(
                f"run config {path} lacks {', '.join(lost)}, which every run's config.yaml holds: "
                f"the file is cut short or not a run's; {fix}"
            )
        return cls.from_yaml(path)

    @classmethod
    def for_method(cls, method: str, **overrides) -> TrainConfig:
        """A config of ``method`` starting from the settings its authors use (CLIP-LoRA: LoRA rank 2 on q/k/v of
        both towers, AdamW lr 2e-4, ...; see :data:`fdalign.train.methods.METHODS`), then ``overrides``.
        CLIP-LoRA's 500 x K iterations become ``epochs`` once the training-set size is known
        (:func:`fdalign.train.methods.clip_lora_iterations`); give ``epochs`` to shorten it."""
        values = dict(method_spec(method).defaults, method=method)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def released(cls, dataset: str, shots: int, **overrides) -> TrainConfig:
        """The authors' released K-shot recipe for ``dataset`` (see REFERENCE.md).

        SGD (Nesterov, momentum 0.9, wd 5e-4 on everything), 60 epochs, cosine without warm-up,
        batch ``min(N, 256)`` with LR = base x batch / 256 from their per-data-set table, a
        trainable head, SPC (keep 60, k 20, raw centres), beta 20 with their KL (beta 1 in paper
        units), crops of scale (0.08, 1) and no flips.

        Mode ``lp-ft``, as their all-data-sets script runs by default (``load_head=True``): a
        60-epoch linear probe at the table's head LR, whose best-on-val head starts FD-Align.
        ``overrides`` (or ``--mode fdalign`` after ``--preset released``) give the variant
        without the probe.
        """
        key = _dataset_key(dataset)
        if key not in RELEASED_LRS:
            raise FDAlignError(
                f"no released learning rates for data set {dataset!r}; known: {', '.join(sorted(RELEASED_LRS))} "
                "(pass --dataset-name, or set --lr yourself without --preset released)"
            )
        if shots not in RELEASED_SHOTS:
            raise FDAlignError(
                f"the released LR table covers shots {', '.join(map(str, RELEASED_SHOTS))}, not {shots}; "
                "set --lr yourself without --preset released"
            )
        i = RELEASED_SHOTS.index(shots)
        lp, ft = RELEASED_LRS[key]
        values: dict[str, Any] = dict(
            shots=shots,
            dataset_name=dataset,
            templates="openai80",
            mode="lp-ft",
            alpha=1.0,
            beta=20.0,
            kl_direction="released",
            temperature=None,
            spc=True,
            spc_keep=60,
            spc_k=20,
            spc_renormalize=False,
            head="trainable",
            optimizer="sgd",
            lr=ft[i],
            lp_lr=lp[i],
            lr_per_256=True,
            weight_decay=5e-4,
            wd_skip_norm_bias=False,
            momentum=0.9,
            nesterov=True,
            epochs=60,
            lp_epochs=60,
            batch_size=0,
            warmup_epochs=0.0,
            warmup_steps=0,
            min_lr=0.0,
            grad_clip=None,
            crop_scale=[0.08, 1.0],
            hflip=False,
            selection="best",
        )
        values.update(overrides)
        return cls(**values)


document_fields(TrainConfig)


def changed_settings(old: TrainConfig, new: TrainConfig) -> dict[str, tuple]:
    """``{field: (old, new)}`` of the settings that change a run's result (not NON_SEMANTIC_FIELDS)."""
    a, b = old.to_dict(), new.to_dict()
    return {k: (a[k], b[k]) for k in a if k not in NON_SEMANTIC_FIELDS and a[k] != b[k]}


def warmup_warning(
    mode: str, epochs: int, lp_epochs: int, warmup_epochs: float, warmup_steps: int | None
) -> str | None:
    """:meth:`TrainConfig.warmup_warning` on plain values (the report reads them from runs' config.yaml).

    The warm-up restarts with each phase (lp-ft: the probe's ``lp_epochs``, then ``epochs``); with
    ``warmup_steps`` set, the user chose the length in steps, and nothing is said."""
    if warmup_steps is not None:
        return None
    lengths = {"epochs": epochs} | ({"lp_epochs": lp_epochs} if mode == "lp-ft" else {})
    covered = [f"{k} = {v}" for k, v in lengths.items() if 0 < v <= warmup_epochs]
    if not covered:
        return None
    shortest = min(v for v in lengths.values() if v > 0)
    return (
        f"the LR warm-up (warmup_epochs = {warmup_epochs:g}) lasts the whole run ({', '.join(covered)}): the LR "
        f"only rises and never decays; set --warmup-epochs below {shortest} (e.g. {shortest / 10:g}) or train "
        "more epochs"
    )


RELEASED_SHOTS = (1, 2, 4, 8, 16)
# data set -> (linear-probe head LR, full LR), per 256 images, for shots 1, 2, 4, 8, 16 (REFERENCE.md)
RELEASED_LRS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "aircraft": ((30, 30, 10, 2, 2), (5e-5, 5e-5, 5e-5, 5e-5, 1e-5)),
    "caltech101": ((2, 9, 5, 2, 2), (5e-6, 6e-5, 1e-4, 5e-6, 5e-4)),
    "dtd": ((40, 10, 9, 6, 5), (2e-4,) * 5),
    "eurosat": ((300, 100, 80, 30, 20), (2e-4, 2e-4, 3e-4, 1e-4, 9e-5)),
    "flowers102": ((30, 30, 6, 4, 3), (7e-5,) * 5),
    "food101": ((7, 4, 3, 1, 1), (2e-5,) * 5),
    "imagenet": ((0.5,) * 5, (5e-5,) * 5),
    "oxfordpets": ((20, 60, 30, 2, 2), (6e-5,) * 5),
    "stanfordcars": ((6, 5, 2, 1, 0.9), (5e-5,) * 5),
    "sun397": ((3, 0.9, 0.9, 1, 0.7), (4e-5, 8e-5, 9e-5, 1e-4, 1e-4)),
    "ucf101": ((30, 20, 7, 3, 3), (1e-4, 9e-5, 6e-5, 5e-5, 6e-5)),
}


# ----------------------------------------------------------------------------------------------
# flags


def add_config_arguments(parser: argparse.ArgumentParser, cls: type | None = None) -> None:
    """One flag per field of ``cls`` (default :class:`TrainConfig`): :func:`fdalign.options.add_arguments`."""
    add_arguments(parser, cls or TrainConfig)


def config_from_args(args: argparse.Namespace, preset: str | None = None) -> TrainConfig:
    """defaults < ``--preset`` < ``--config`` file < explicit flags."""
    base = None
    if preset:
        if preset != "released":
            raise FDAlignError(f"unknown preset {preset!r}; the only preset is 'released'")
        # the preset needs the data set and shots, which may come from the file or the flags
        probe = TrainConfig.from_args(args)
        name = probe.dataset_name or guess_dataset_name(probe.data)
        if not name:
            raise FDAlignError("--preset released needs the data set: pass --dataset-name (e.g. eurosat)")
        base = TrainConfig.released(name, probe.shots)
    return TrainConfig.from_args(args, base=base).validate("the command line")
