"""The run directory: what ``fdalign train`` leaves behind and ``fdalign eval`` reads.

::

    <run>/config.yaml              the resolved TrainConfig (fdalign train --config it to repeat the run)
    <run>/splits/train.json        the exact K-shot training images (fdalign.data.save_split)
    <run>/splits/val.json          the validation images used for every selection
    <run>/hashes.json              split_hash of every split used, test and OOD included
    <run>/model/best.safetensors   the selected fine-tuned encoder + head, and the zero-shot head
    <run>/model/best.sha256        that file's sha256 when training finished (export checks it)
    <run>/selection.json           what was chosen (epoch, WiSE-FT alpha) on which split
    <run>/log.csv                  one row per optimiser step
    <run>/checkpoint/last.*        the resumable state of the last finished epoch
    <run>/metrics.json, report.md  evaluation (written by the CLI)
    <run>/.fdalign.lock(.json)     held by the one process working on the run (fdalign.io.run_lock)

``best.safetensors`` holds ``encoder.*`` (the image tower's state dict), ``head.*`` and
``zeroshot_head.*`` in float32; the metadata says how to rebuild the heads and which base model
the encoder belongs to. Loading executes no code and checks the file's content hash.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fdalign.errors import FDAlignError
from fdalign.heads import PrototypeHead, head_from_state_dict
from fdalign.io import atomic_save_safetensors, read_safetensors
from fdalign.train.config import TrainConfig

MODEL_FORMAT = "fdalign-model/1"
CONFIG_FILE = "config.yaml"
MODEL_FILE = "model/best.safetensors"
MODEL_HASH_FILE = "model/best.sha256"  # sha256 of the finished run's model file (export checks it)
SELECTION_FILE = "selection.json"
HASHES_FILE = "hashes.json"
LOG_FILE = "log.csv"


def save_model(
    path: str | os.PathLike,
    encoder: nn.Module,
    head: PrototypeHead,
    zeroshot_head: PrototypeHead | None = None,
    metadata: dict | None = None,
    adapter: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write encoder + head (+ zero-shot head) as float32 safetensors, atomically.

    ``metadata`` values are JSON-encoded into the safetensors header (e.g. epoch, classnames,
    base model fingerprint). ``adapter``: LoRA weights kept as ``adapter.*`` beside the merged encoder.
    """
    tensors = {f"encoder.{k}": _f32(v) for k, v in encoder.state_dict().items()}
    tensors.update({f"head.{k}": _f32(v) for k, v in head.state_dict().items()})
    meta = {"format": MODEL_FORMAT, "head_kind": head.kind, "head_scale": repr(head.scale)}
    if zeroshot_head is not None:
        tensors.update({f"zeroshot_head.{k}": _f32(v) for k, v in zeroshot_head.state_dict().items()})
        meta.update(zeroshot_head_kind=zeroshot_head.kind, zeroshot_head_scale=repr(zeroshot_head.scale))
    tensors.update({f"adapter.{k}": _f32(v) for k, v in (adapter or {}).items()})
    for k, v in (metadata or {}).items():
        meta[k] = json.dumps(v)
    atomic_save_safetensors(Path(path), tensors, meta)
    return Path(path)


def record_model_hash(run_dir: str | os.PathLike) -> str:
    """Write ``<run>/model/best.sha256`` for the model file as it is now (the end of training)."""
    from fdalign.io import atomic_write_text, file_sha256

    digest = file_sha256(Path(run_dir) / MODEL_FILE)
    atomic_write_text(Path(run_dir) / MODEL_HASH_FILE, f"{digest}  best.safetensors\n")
    return digest


def check_model_hash(run_dir: str | os.PathLike) -> None:
    """Refuse a model file that is not the one training finished with (runs before the record pass)."""
    from fdalign.io import file_sha256

    rec = Path(run_dir) / MODEL_HASH_FILE
    if not rec.is_file():
        return
    want = rec.read_text(encoding="utf-8", errors="replace").split()[:1]
    if want != [file_sha256(Path(run_dir) / MODEL_FILE)]:
        raise FDAlignError(
            f"model file {Path(run_dir) / MODEL_FILE} is not the one its run finished training with "
            f"(sha256 differs from {rec}); train the run again or restore the file"
        )


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


@dataclass
class SavedModel:
    encoder: dict[str, torch.Tensor] = field(repr=False)
    head: PrototypeHead
    zeroshot_head: PrototypeHead | None
    metadata: dict
    adapter: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # LoRA weights (peft's keys)


def load_model(path: str | os.PathLike) -> SavedModel:
    """Read a :func:`save_model` file (CPU tensors)."""

    path = Path(path)
    if not path.is_file():
        raise FDAlignError(
            f"model file {path} does not exist; is this an fdalign run directory that finished training?"
        )
    tensors, raw = read_safetensors(
        path, "model file", fix="train the run again (or restore the file from a copy); its results cannot be trusted"
    )
    if raw.get("format") != MODEL_FORMAT:
        raise FDAlignError(f"{path} is not an fdalign model file (format {raw.get('format')!r})")

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    head = head_from_state_dict(part("head."), raw["head_kind"], float(raw["head_scale"]))
    zs = None
    if "zeroshot_head_kind" in raw:
        zs = head_from_state_dict(part("zeroshot_head."), raw["zeroshot_head_kind"], float(raw["zeroshot_head_scale"]))
    reserved = {"format", "head_kind", "head_scale", "zeroshot_head_kind", "zeroshot_head_scale"}
    meta = {k: json.loads(v) for k, v in raw.items() if k not in reserved}
    return SavedModel(encoder=part("encoder."), head=head, zeroshot_head=zs, metadata=meta, adapter=part("adapter."))


@dataclass
class LoadedRun:
    """A trained run, ready to evaluate.

    Attributes:
        backend: the CLIP backend with the *fine-tuned* image encoder loaded.
        head: the fine-tuned head; zeroshot_head: the prompt-prototype head before training.
        zero_shot_encoder_state: the base encoder's weights (CPU), for zero-shot / WiSE-FT.
        config: the run's resolved TrainConfig; classnames: label order of the heads.
        selection: ``selection.json``; metadata: the model file's metadata.
    """

    backend: object
    head: PrototypeHead
    zeroshot_head: PrototypeHead
    zero_shot_encoder_state: dict[str, torch.Tensor] = field(repr=False)
    config: TrainConfig
    classnames: list[str]
    selection: dict
    metadata: dict
    run_dir: Path

    @property
    def zero_shot_head(self) -> PrototypeHead:
        return self.zeroshot_head

    def zero_shot_encoder(self) -> nn.Module:
        """A copy of the encoder holding the base (zero-shot) weights."""
        import copy

        enc = copy.deepcopy(self.backend.image_encoder)
        enc.load_state_dict(self.zero_shot_encoder_state)
        return enc

    def wiseft(self, alpha: float) -> tuple[nn.Module, nn.Module]:
        """``(encoder, head)`` interpolated with weight ``alpha`` on the fine-tuned side."""
        from fdalign.train.wiseft import wiseft_model

        return wiseft_model(self.zero_shot_encoder(), self.backend.image_encoder, self.zeroshot_head, self.head, alpha)


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedRun:
    """Load ``<run>/config.yaml`` + ``<run>/model/best.safetensors`` onto the base model."""
    from fdalign.backends import load_clip

    run_dir = Path(run_dir)
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FDAlignError(
            f"{run_dir} is not an fdalign run directory (no {CONFIG_FILE}); pass the --out of `fdalign train`"
        )
    config = TrainConfig.from_run_yaml(cfg_path)
    saved = load_model(run_dir / MODEL_FILE)
    backend = load_clip(config.model, pretrained=config.pretrained, model_config=config.model_config, device="cpu")
    want = saved.metadata.get("base_fingerprint")
    if want and getattr(backend, "fingerprint", want) != want:
        raise FDAlignError(
            f"{run_dir}: the run was trained from base model {want} but {config.model} / {config.pretrained} now "
            f"loads {backend.fingerprint}; point config.yaml at the original weights"
        )
    enc = backend.image_encoder
    zs_state = {k: v.detach().cpu().clone() for k, v in enc.state_dict().items()}
    missing, unexpected = enc.load_state_dict(_cast_like(saved.encoder, enc.state_dict()), strict=False)
    if missing or unexpected:
        raise FDAlignError(
            f"{run_dir / MODEL_FILE} does not fit the model {config.model}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    backend.to(device)
    zs_head = saved.zeroshot_head
    if zs_head is None:
        raise FDAlignError(f"{run_dir / MODEL_FILE} has no zero-shot head; re-run `fdalign train`")
    sel_path = run_dir / SELECTION_FILE
    selection = json.loads(sel_path.read_text(encoding="utf-8")) if sel_path.is_file() else {}
    return LoadedRun(
        backend=backend,
        head=saved.head.to(device),
        zeroshot_head=zs_head.to(device),
        zero_shot_encoder_state=zs_state,
        config=config,
        classnames=list(saved.metadata.get("classnames", [])),
        selection=selection,
        metadata=saved.metadata,
        run_dir=run_dir,
    )


def _cast_like(state: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Saved float32 -> the model's dtype (a bf16 backend loads a float32 file)."""
    return {k: v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v for k, v in state.items()}


__all__ = [
    "record_model_hash",
    "check_model_hash",
    "MODEL_HASH_FILE",
    "save_model",
    "load_model",
    "SavedModel",
    "LoadedRun",
    "load_run",
    "MODEL_FILE",
    "CONFIG_FILE",
]
