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
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError
from fdalign.io import atomic_write_text

MODES = ("fdalign", "linear-probe", "lp-ft")
HEADS = ("frozen", "trainable")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("fp32", "bf16", "fp16")
KL_DIRECTIONS = ("paper", "released")
SELECTIONS = ("best", "last")
# Fields that change neither the maths nor the data order: they may differ between a run and its resume
# (data paths may move; the CLI compares the K-shot images' hashes instead).
NON_SEMANTIC_FIELDS = frozenset(
    {"resume", "progress", "num_workers", "eval_batch_size", "tensorboard", "out", "device", "ood", "target",
     "target_templates",
     "wiseft_alphas", "verify_images", "data", "image_root", "dataset_name", "f0_cache"}
)


def _f(default, help: str, *, choices: tuple | None = None, flag: str | None = None, **kw):
    """A dataclass field carrying its CLI help (and choices) in the metadata."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if flag:
        meta["flag"] = flag
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """A training run. Field help texts double as ``fdalign train --help``."""

    # --- model and data -------------------------------------------------------------------------
    model: str | None = _f(None, "CLIP model: an open_clip name (ViT-B-32), 'hf:<repo or dir>', or a name "
                           "used with --model-config")
    pretrained: str | None = _f(None, "open_clip pretrained tag (e.g. openai) or a checkpoint file")
    model_config: str | None = _f(None, "open_clip model-config JSON for a custom architecture")
    data: str | None = _f(None, "data: an ImageFolder root (train/ [val/] [test/]), a CSV manifest or a CoOp "
                          "split_zhou_*.json")
    image_root: str | None = _f(None, "image folder the paths of a JSON split are relative to")
    classnames: str | None = _f(None, "class names overriding folder names: a text file with one name per line "
                                "in label order (sorted folders), or 'folder<TAB>name' lines, or 'imagenet' "
                                "(CLIP's / CoOp's 1000 ImageNet names by wnid: ImageNet needs it)")
    dataset_name: str | None = _f(None, "data set name for reports and '--preset released' LR tables "
                                  "(default: guessed from --data)")
    shots: int = _f(16, "K: training images per class (sampled with --seed)")
    seed: int = _f(1, "seed of the K-shot sample, the data order and the augmentations")
    templates: str = _f("openai80", "prompt templates: a built-in set (openai80, tip7) or a text file, one "
                        "template with '{}' per line")
    split_file: str | None = _f(None, "with --data indices/<ds>/shot_K-seed_S.json: the CoOp split_zhou_*.json its "
                                "indices point into, whose test list is the ID test split (default: found beside "
                                "the index file or --image-root); for ImageNet a folder whose val/ is the test set")
    base_classes: str | None = _f(None, "base-to-novel: 'first-half' (the first ceil(n/2) classes in label order, "
                                  "CoCoOp's convention) or a file naming the base classes, one per line; train and "
                                  "select on the base classes only, report base test and novel test, each scored "
                                  "with its own classes' prototypes")

    # --- the method -------------------------------------------------------------------------------
    mode: str = _f("fdalign", "fdalign: train encoder (+head); linear-probe: encoder frozen, head only, CE; "
                   "lp-ft: linear probe for --lp-epochs, then fdalign", choices=MODES)
    alpha: float = _f(1.0, "weight of the classification (cross-entropy) loss")
    beta: float = _f(1.0, "weight of the spurious-feature KL loss; 0 = plain full fine-tuning (the frozen "
                     "encoder is not even run). Units follow --kl-direction: with 'paper' beta multiplies a "
                     "per-image KL; 'released' divides it by k, so the authors' beta 20 with k = 20 "
                     "corrected prototypes is beta 1 in paper units (beta_paper = beta_released / k)")
    kl_direction: str = _f("paper", "paper: KL(P_t||P_0) per image; released: the authors' KLDivLoss "
                           "(KL(P_0||P_t)/k, averaged over the k spurious prototypes too)", choices=KL_DIRECTIONS)
    temperature: float | None = _f(None, "logit scale of the head and of the spurious distribution "
                                   "(default: the model's logit_scale)")
    spc: bool = _f(True, "Spurious Prototype Correction: IsolationForest + KMeans over the template prototypes")
    spc_keep: int = _f(60, "SPC: templates kept by the IsolationForest")
    spc_k: int = _f(20, "SPC: KMeans centres (corrected spurious prototypes)")
    spc_seed: int = _f(0, "SPC: random_state of IsolationForest and KMeans")
    spc_renormalize: bool = _f(True, "SPC: L2-normalise the KMeans centres; without it the raw centres are "
                               "used unnormalised in the KL (as released)")
    head: str = _f("frozen", "frozen: zero-shot prototypes (paper); trainable: linear head initialised from "
                   "them with a bias (released code); linear-probe/lp-ft always train the head",
                   choices=HEADS)
    f0_mode: str = _f("eval", "module mode of the frozen encoder f0: eval (deterministic: no dropout, BatchNorm "
                      "running stats) or released (train mode, as the authors' code runs it; matters for "
                      "dropout/BatchNorm backbones such as RN50)", choices=("eval", "released"))

    f0_precision: str = _f("auto", "precision of the frozen encoder f0 (its features only feed a softmax over "
                           "the spurious prototypes): auto = bf16 on CUDA (untested on a GPU so far), fp32 on CPU",
                           choices=("auto", "fp32", "bf16"))
    view_cycle: int = _f(0, "0: fresh augmented views every epoch; V > 0: epoch e re-uses the views of epoch "
                         "e mod V (a fixed set of V views per image, so the f0 cache holds V epochs)")
    f0_cache: str | None = _f(None, "folder for the f0 cache: f0's spurious distributions of every augmented "
                              "view, stored by the first run and read by every later run with the same seed, "
                              "data, transform, f0 weights and prototypes (sweeps over alpha, beta, lr...); "
                              "the results are bitwise the same as without it")

    # --- optimisation ---------------------------------------------------------------------------
    optimizer: str = _f("adamw", "optimiser", choices=OPTIMIZERS)
    lr: float = _f(1e-5, "peak learning rate (per 256 images if --lr-per-256)")
    lp_lr: float = _f(1e-3, "learning rate of the linear-probe phase (mode linear-probe, or the first phase "
                      "of lp-ft)")
    lr_per_256: bool = _f(False, "--lr and --lp-lr are per 256 images: multiply them by batch/256")
    weight_decay: float = _f(0.1, "weight decay (decoupled for adamw)")
    wd_skip_norm_bias: bool = _f(True, "no weight decay on biases, norm gains and other 1-D parameters "
                                 "(open_clip's convention)")
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
    selection: str = _f("best", "best: keep the epoch with the best val top-1; last: keep the last epoch",
                        choices=SELECTIONS)

    # --- hardware -------------------------------------------------------------------------------
    precision: str = _f("fp32", "autocast precision on CUDA (bf16/fp16); CPU always runs fp32",
                        choices=PRECISIONS)
    grad_checkpointing: bool = _f(False, "gradient checkpointing in the image tower (less memory, slower)")
    device: str = _f("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    num_workers: int = _f(min(4, os.cpu_count() or 1), "DataLoader worker processes (default: up to 4, at most the CPU count)")

    # --- evaluation and output ------------------------------------------------------------------
    wiseft_alphas: list[float] = _f([0.0, 0.25, 0.5, 0.75, 1.0], "WiSE-FT mixing weights to evaluate "
                                    "(0 = zero-shot, 1 = fine-tuned); the best on val is recorded")
    ood: list[str] = _f([], "out-of-distribution sets NAME=PATH[:subset] (repeatable), mapped to the ID classes by "
                        "wnid / name (V2: folder k = class k); a set lacking ID classes warns unless ':subset' or "
                        "named a, r, imagenet-a, imagenet-r")
    target: list[str] = _f([], "cross-data-set targets NAME=PATH (repeatable): data sets evaluated with the "
                           "fine-tuned encoder and their OWN class names (their test split, or the folder's "
                           "classes), never used to select anything")
    target_templates: list[str] = _f([], "NAME=TEMPLATES: prompt templates of a --target (a built-in set or a "
                                     "file); a target not named here uses --templates")
    eval_batch_size: int = _f(256, "batch size for feature extraction")
    verify_images: bool = _f(True, "open every few-shot image before training and fail on unreadable ones")
    out: str | None = _f(None, "run directory (created); holds config.yaml, splits/, model/, metrics.json, "
                         "report.md")
    resume: bool = _f(False, "continue from <out>/checkpoint/last.* (same config) instead of starting over")
    progress: bool = _f(True, "show progress bars")
    tensorboard: bool = _f(True, "also log to <out>/tensorboard when the tensorboard package is installed")

    # ------------------------------------------------------------------------------------------
    def validate(self, source: str = "the config") -> "TrainConfig":
        """Check ranges and choices; raises :class:`FDAlignError` naming the field. Returns self."""

        def bad(name, why):
            raise FDAlignError(f"{source}: {name} = {getattr(self, name)!r} {why}")

        for f in dataclasses.fields(self):
            ch = f.metadata.get("choices")
            if ch and getattr(self, f.name) not in ch:
                bad(f.name, f"is not one of {', '.join(ch)}")
        if self.shots < 1:
            bad("shots", "must be >= 1")
        for name in ("epochs", "lp_epochs", "batch_size", "num_workers", "spc_keep", "spc_k", "view_cycle"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        if self.eval_batch_size < 1:
            bad("eval_batch_size", "must be >= 1")
        if self.epochs < 1:
            bad("epochs", "must be >= 1")
        if self.mode == "lp-ft" and self.lp_epochs < 1:
            bad("lp_epochs", "must be >= 1 for mode lp-ft")
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

    @property
    def total_epochs(self) -> int:
        return self.lp_epochs + self.epochs if self.mode == "lp-ft" else self.epochs

    def resolved(self, num_train: int) -> "TrainConfig":
        """Turn data-dependent settings into numbers: ``batch_size=0`` and ``lr_per_256``."""
        if num_train < 1:
            raise FDAlignError("the training set is empty")
        c = dataclasses.replace(self, adam_betas=list(self.adam_betas), crop_scale=list(self.crop_scale),
                                wiseft_alphas=list(self.wiseft_alphas), ood=list(self.ood),
                                target=list(self.target), target_templates=list(self.target_templates))
        if c.batch_size == 0:
            c.batch_size = min(num_train, 256)
        if c.lr_per_256:
            c.lr = c.lr * c.batch_size / 256
            c.lp_lr = c.lp_lr * c.batch_size / 256
            c.lr_per_256 = False
        return c

    # ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "the config") -> "TrainConfig":
        """Build from a mapping; an unknown key is an error naming it and ``source``."""
        if not isinstance(d, dict):
            raise FDAlignError(f"{source} must be a mapping of option: value, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        # accept the CLI spelling (lp-epochs) as well as the field name
        d = {str(k).replace("-", "_"): v for k, v in d.items()}
        unknown = sorted(set(d) - names)
        if unknown:
            import difflib

            hint = difflib.get_close_matches(unknown[0], names, n=1)
            raise FDAlignError(
                f"{source}: unknown option {unknown[0]!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + "; see `fdalign train --help` for the options"
            )
        hints = typing.get_type_hints(cls)
        return cls(**{k: _coerce(v, hints[k], k, source) for k, v in d.items()})

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML (atomically)."""
        import yaml

        text = "# fdalign training config (fdalign train --config this-file)\n" + yaml.safe_dump(
            self.to_dict(), sort_keys=False, default_flow_style=None
        )
        return atomic_write_text(path, text)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, base: "TrainConfig | None" = None) -> "TrainConfig":
        """Read a YAML file; keys it sets override ``base`` (default: the defaults)."""
        import yaml

        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FDAlignError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise FDAlignError(f"config file {path} is not valid YAML: {e}".replace("\n", " ")) from None
        d = d or {}
        cls.from_dict(d, source=f"config file {path}")  # key / type checks with the file's name
        merged = (base or cls()).to_dict()
        merged.update({str(k).replace("-", "_"): v for k, v in d.items()})
        return cls.from_dict(merged, source=f"config file {path}")

    # ------------------------------------------------------------------------------------------
    @classmethod
    def released(cls, dataset: str, shots: int, **overrides) -> "TrainConfig":
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
        values = dict(
            shots=shots, dataset_name=dataset, templates="openai80", mode="lp-ft", alpha=1.0, beta=20.0,
            kl_direction="released", temperature=None, spc=True, spc_keep=60, spc_k=20, spc_renormalize=False,
            head="trainable", optimizer="sgd", lr=ft[i], lp_lr=lp[i], lr_per_256=True, weight_decay=5e-4,
            wd_skip_norm_bias=False, momentum=0.9, nesterov=True, epochs=60, lp_epochs=60, batch_size=0,
            warmup_epochs=0.0, warmup_steps=0, min_lr=0.0, grad_clip=None, crop_scale=[0.08, 1.0],
            hflip=False, selection="best",
        )
        values.update(overrides)
        return cls(**values)


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
_ALIASES = {
    "fgvcaircraft": "aircraft", "fgvc": "aircraft", "describabletextures": "dtd", "oxfordflowers": "flowers102",
    "flowers": "flowers102", "oxfordflowers102": "flowers102", "pets": "oxfordpets", "cars": "stanfordcars",
    "caltech": "caltech101", "food": "food101", "sun": "sun397", "ucf": "ucf101",
    "standfordcars": "stanfordcars",  # the authors' spelling in their index folders and scripts
}


def _dataset_key(name: str) -> str:
    k = re.sub(r"[^a-z0-9]", "", str(name).lower())
    return _ALIASES.get(k, k)


def guess_dataset_name(data: str | None) -> str | None:
    """``.../split_zhou_OxfordPets.json`` -> ``OxfordPets``; ``indices/dtd/<file>.json`` -> ``dtd``;
    ``imagenet/images`` (CoOp's layout) -> ``imagenet``; another folder -> its name."""
    if not data:
        return None
    p = Path(data)
    m = re.fullmatch(r"split_zhou_(.+)\.json", p.name)
    if m:
        return m.group(1)
    if re.fullmatch(r"shot_\d+-seed_\d+\.json", p.name) or p.parent.parent.name == "indices":
        return p.parent.name or None
    if not p.suffix and p.name == "images" and p.parent.name:
        return p.parent.name
    return (p.stem if p.suffix else p.name) or None


# ----------------------------------------------------------------------------------------------
# typing helpers


def _unwrap_optional(tp) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _coerce(value, tp, name: str, source: str):
    """YAML value -> the field's type, with an error naming the field when it does not fit."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise FDAlignError(f"{source}: {name} may not be empty (null)")
    origin = typing.get_origin(inner)
    try:
        if origin in (list, tuple):
            (elem,) = typing.get_args(inner)[:1]
            if isinstance(value, (str, int, float)):
                value = [value]
            return [_scalar(v, elem) for v in value]
        return _scalar(value, inner)
    except (TypeError, ValueError):
        raise FDAlignError(
            f"{source}: {name} = {value!r} is not a valid {getattr(inner, '__name__', inner)}"
        ) from None


def _scalar(v, tp):
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return v.lower() in ("true", "yes", "1", "on")
        raise ValueError(v)
    if tp is int:
        if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
            raise ValueError(v)
        return int(v)
    if tp is float:
        if isinstance(v, bool):
            raise ValueError(v)
        return float(v)
    if tp is str:
        if isinstance(v, (dict, list)):
            raise TypeError(v)
        return str(v)
    return v


# ----------------------------------------------------------------------------------------------
# argparse generated from the fields


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = None) -> None:
    """One flag per field of ``cls`` (default :class:`TrainConfig`); defaults are SUPPRESSed so only explicit
    flags reach the namespace (they then override --config / --preset), and the default is written into the help."""
    cls = cls or TrainConfig
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        inner, _ = _unwrap_optional(hints[f.name])
        default = getattr(defaults, f.name)
        shown = "none" if default in (None, []) else (" ".join(map(str, default)) if isinstance(default, list) else default)
        help_text = f"{f.metadata['help']} (default: {shown})".replace("%", "%%")
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if inner is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(inner) is list:
            elem = typing.get_args(inner)[0]
            kw["type"] = elem
            if f.name in ("ood", "target"):  # NAME=PATH lists (meta-train calls them targets)
                kw.update(action="extend", nargs="+", metavar="NAME=PATH")
            elif f.name in ("crop_scale", "adam_betas"):
                kw.update(nargs=2, metavar=("LO", "HI") if f.name == "crop_scale" else ("B1", "B2"))
            else:
                kw.update(nargs="+", metavar=elem.__name__.upper())
        else:
            kw["type"] = inner
            if inner is not str:
                kw["metavar"] = inner.__name__.upper()
        parser.add_argument(flag_name(f.name), **kw)


def config_from_args(args: argparse.Namespace, preset: str | None = None) -> TrainConfig:
    """defaults < ``--preset`` < ``--config`` file < explicit flags."""
    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig()
    config_file = getattr(args, "config", None)
    if preset:
        if preset != "released":
            raise FDAlignError(f"unknown preset {preset!r}; the only preset is 'released'")
        # the preset needs the data set and shots, which may come from the file or the flags
        probe = TrainConfig.from_yaml(config_file) if config_file else cfg
        probe = dataclasses.replace(probe, **explicit)
        name = probe.dataset_name or guess_dataset_name(probe.data)
        if not name:
            raise FDAlignError("--preset released needs the data set: pass --dataset-name (e.g. eurosat)")
        cfg = TrainConfig.released(name, probe.shots)
    if config_file:
        cfg = TrainConfig.from_yaml(config_file, base=cfg)
    d = cfg.to_dict()
    d.update(explicit)
    return TrainConfig.from_dict(d, source="the command line").validate("the command line")
