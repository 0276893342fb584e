"""The options of a meta-training run (``fdalign meta-train``), as one dataclass.

Kept free of torch, like :mod:`fdalign.train.config`, so that the command line builds its flags without
loading it; the training itself is :mod:`fdalign.train.meta`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from fdalign.data.episode_spec import ON_SMALL, PROTO_SCALE_INIT, EpisodeSpec
from fdalign.errors import FDAlignError
from fdalign.options import FLOAT32_MAX, beyond_float32, check_choices, option
from fdalign.train.config import KL_DIRECTIONS, OPTIMIZERS, PRECISIONS, SELECTIONS, ModelOptions

# settings that change neither the training maths nor the episodes (resume may change them)
META_NON_SEMANTIC = (
    "data",
    "image_root",
    "out",
    "device",
    "num_workers",
    "eval_batch_size",
    "resume",
    "progress",
    "tensorboard",
    "test_episodes",
    "test_shots",
    "target",
)
_f = option  # every field below is an option: a default, its --help text, its choices


@dataclass
class MetaConfig(ModelOptions):
    """A meta-training run (defaults: the authors' N-way K-shot setting, REFERENCE.md)."""

    COMMAND = "fdalign meta-train"
    TITLE = "fdalign meta-training config"

    data: str | None = _f(
        None,
        "class splits: a miniImageNet folder (train.csv val.csv test.csv + images/) "
        "or a folder with base/ val/ novel/ class folders",
    )
    image_root: str | None = _f(None, "folder the images of the CSV split files are in (default DATA/images)")
    classnames: str | None = _f(
        None,
        "class-names file: '<wnid or folder> <name>' per line (miniImageNet "
        "labels are WordNet ids, which prompts cannot use)",
    )
    seed: int = _f(1, "seed of the episodes (training and validation) and their augmentations")
    templates: str = _f("openai80", "prompt templates: openai80, tip7 or a text file (one template with '{}' per line)")
    n_way: int = _f(5, "N: classes per training episode")
    k_shot: int = _f(5, "K: support images per class in training episodes")
    q_query: int = _f(15, "Q: query images per class")
    episodes_per_step: int = _f(4, "episodes per optimiser step")
    episodes_per_epoch: int = _f(1000, "training episodes per epoch")
    val_episodes: int = _f(600, "validation episodes (val classes, same N/K/Q) after each epoch")
    on_small: str = _f("skip", "classes with fewer than K+Q images: skip (counted) or error", choices=ON_SMALL)
    alpha: float = _f(1.0, "weight of the query cross-entropy")
    beta: float = _f(20.0, "weight of the spurious KL on every episode image (0 = plain fine-tuning)")
    kl_direction: str = _f(
        "released", "paper: KL(P_t||P_0); released: the authors' KLDivLoss units", choices=KL_DIRECTIONS
    )
    temperature: float | None = _f(None, "scale of the spurious softmax (default: the model's logit_scale)")
    spc: bool = _f(True, "Spurious Prototype Correction of the base-class template prototypes")
    spc_keep: int = _f(60, "SPC: templates kept by the IsolationForest")
    spc_k: int = _f(20, "SPC: KMeans centres")
    spc_seed: int = _f(0, "SPC: random_state of IsolationForest and KMeans")
    spc_renormalize: bool = _f(False, "SPC: L2-normalise the KMeans centres (released: raw centres)")
    proto_scale: float = _f(PROTO_SCALE_INIT, "initial scale of the ProtoNet cosine logits")
    learn_scale: bool = _f(True, "learn the ProtoNet scale with the encoder")
    f0_mode: str = _f("eval", "module mode of the frozen encoder f0 (eval or released)", choices=("eval", "released"))
    optimizer: str = _f("sgd", "optimiser", choices=OPTIMIZERS)
    lr: float = _f(5e-5, "peak learning rate (cosine schedule over all steps)")
    weight_decay: float = _f(5e-4, "weight decay")
    wd_skip_norm_bias: bool = _f(False, "no weight decay on biases, norm gains and 1-D parameters")
    momentum: float = _f(0.9, "SGD momentum")
    nesterov: bool = _f(True, "SGD Nesterov momentum")
    adam_betas: list[float] = _f([0.9, 0.98], "AdamW betas")
    adam_eps: float = _f(1e-6, "AdamW epsilon")
    epochs: int = _f(10, "training epochs of --episodes-per-epoch episodes")
    warmup_steps: int = _f(0, "linear LR warm-up in optimiser steps")
    min_lr: float = _f(0.0, "learning rate at the end of the cosine schedule")
    grad_clip: float | None = _f(None, "clip the gradient norm to this value (default: no clipping)")
    crop_scale: list[float] = _f([0.08, 1.0], "RandomResizedCrop area range")
    hflip: bool = _f(False, "random horizontal flips")
    selection: str = _f(
        "best", "best: the epoch with the best val-episode accuracy; last: the last epoch", choices=SELECTIONS
    )
    precision: str = _f("fp32", "autocast precision on CUDA (bf16/fp16); CPU always runs fp32", choices=PRECISIONS)
    device: str = _f("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    num_workers: int = _f(min(4, os.cpu_count() or 1), "DataLoader worker processes")
    eval_batch_size: int = _f(256, "batch size of feature extraction")
    test_episodes: int = _f(2000, "test episodes per setting after training (0: no test)")
    test_shots: list[int] = _f([1, 5], "K of the test settings (N = --n-way, Q = --q-query)")
    target: list[str] = _f([], "cross-domain targets NAME=PATH (an ImageFolder used whole), tested after training")
    out: str | None = _f(None, "run directory (config.yaml, log.csv, checkpoint/, model/, metrics.json, report.md)")
    resume: bool = _f(False, "continue from <out>/checkpoint/last.* (same settings)")
    progress: bool = _f(True, "show progress bars")
    tensorboard: bool = _f(
        False, "also log to <out>/tensorboard (needs the tensorboard package: pip install 'fdalign[tensorboard]')"
    )

    @property
    def spec(self) -> EpisodeSpec:
        return EpisodeSpec(self.n_way, self.k_shot, self.q_query)

    def validate(self) -> MetaConfig:
        self.spec  # noqa: B018  (EpisodeSpec checks N, K, Q)
        check_choices(self, "the meta-training config")
        for name in ("episodes_per_step", "episodes_per_epoch", "val_episodes", "epochs"):
            if getattr(self, name) < 1:
                raise FDAlignError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("lr", "weight_decay", "alpha", "beta", "min_lr", "warmup_steps", "test_episodes"):
            if getattr(self, name) < 0:
                raise FDAlignError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        for name in ("lr", "weight_decay", "alpha", "beta", "min_lr", "proto_scale", "grad_clip"):
            if beyond_float32(getattr(self, name)):
                raise FDAlignError(
                    f"--{name.replace('_', '-')} = {getattr(self, name):g} is beyond what float32 holds "
                    f"({FLOAT32_MAX:.1e}), in which torch computes it"
                )
        if self.precision == "fp16":
            raise FDAlignError("meta-train runs fp32 or bf16 (fp16 would need loss scaling); use --precision bf16")
        if self.proto_scale <= 0:
            raise FDAlignError(f"--proto-scale must be > 0 (got {self.proto_scale})")
        for spec in self.target:
            if "=" not in spec or not all(spec.split("=", 1)):
                raise FDAlignError(f"--target {spec!r}: write each target as NAME=PATH")
        return self


def meta_config_hash(cfg: MetaConfig) -> str:
    """:func:`fdalign.train.trainer.config_hash` of the settings that shape training."""
    from fdalign.train.trainer import config_hash

    blank = MetaConfig()
    semantic = dataclasses.replace(cfg, **{k: getattr(blank, k) for k in META_NON_SEMANTIC})
    return config_hash(semantic)  # type: ignore[arg-type]  # any config dataclass hashes alike


__all__ = ["META_NON_SEMANTIC", "MetaConfig", "meta_config_hash"]
