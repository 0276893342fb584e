"""Resumable training checkpoints as safetensors + JSON (no pickle anywhere).

``<run>/checkpoint/last.safetensors`` holds every tensor: the encoder (``encoder.*``), the head
(``head.*``), the optimiser state flattened to ``optim.<param index>.<name>`` and the torch RNG
states (``rng.torch``, ``rng.cuda.<i>``, uint8), and, in its metadata (``state``), the rest as
JSON: epoch, step, best val, the scheduler position, the optimiser's param groups and non-tensor
state, Python / numpy RNG states. One file, replaced by one rename, so a kill at any moment leaves
either the previous epoch's checkpoint or this one, never a mix; its content hash is checked on
read. ``<run>/checkpoint/last.json`` is a copy of the JSON for humans, written just before; it is
read only from checkpoints made before the JSON moved inside (their pair carries a shared
``token`` to detect a mix).
"""

from __future__ import annotations

import json
import os
import random
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fdalign.errors import FDAlignError
from fdalign.io import atomic_save_safetensors, atomic_write_json

CHECKPOINT_FORMAT = "fdalign-checkpoint/1"


# ----------------------------------------------------------------------------------------------
# optimiser state <-> named tensors


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (``{"optim.<idx>.<name>": tensor}``, JSON-able rest)."""
    tensors, extra = {}, {}
    for idx, st in state_dict["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = v
            else:
                extra.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": state_dict["param_groups"], "extra": extra}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if not key.startswith("optim."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, st in rest.get("extra", {}).items():
        state.setdefault(int(idx), {}).update(st)
    return {"state": state, "param_groups": rest["param_groups"]}


# ----------------------------------------------------------------------------------------------
# RNG


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def rng_json() -> dict:
    py = random.getstate()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
    }


def restore_rng(tensors: dict[str, torch.Tensor], js: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        states = [tensors[k].to(torch.uint8) for k in cuda][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)
    if "python" in js:
        v, state, g = js["python"]
        random.setstate((v, tuple(state), g))
    if "numpy" in js:
        kind, keys, pos, has_gauss, gauss = js["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


# ----------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns; apply it with :func:`restore_modules` / the trainer."""

    epoch: int  # epochs completed
    step: int  # optimiser steps completed (all phases)
    meta: dict  # the whole JSON (best val, scheduler, config hash, ...)
    encoder: dict[str, torch.Tensor] = field(repr=False)
    head: dict[str, torch.Tensor] = field(repr=False)
    optimizer: dict | None = field(repr=False)
    rng_tensors: dict[str, torch.Tensor] = field(repr=False)


def save_checkpoint(
    directory: str | os.PathLike,
    *,
    encoder: nn.Module,
    head: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict,
    name: str = "last",
) -> Path:
    """Write ``<directory>/<name>.safetensors`` and ``<name>.json`` atomically.

    ``meta`` must be JSON-able and contain at least ``epoch`` and ``step``.
    """
    directory = Path(directory)
    token = secrets.token_hex(8)
    tensors = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    opt_rest = None
    if optimizer is not None:
        opt_t, opt_rest = flatten_optimizer_state(optimizer.state_dict())
        tensors.update(opt_t)
    tensors.update(rng_tensors())
    js = dict(meta)
    js.update(format=CHECKPOINT_FORMAT, token=token, optimizer=opt_rest, rng=rng_json())
    header = {"format": CHECKPOINT_FORMAT, "token": token, "state": json.dumps(js, sort_keys=True)}
    # the JSON first: every "is there a run here" test looks for it, so it exists whenever the tensors do;
    # a kill between the two renames leaves the previous epoch's safetensors, which is complete by itself
    atomic_write_json(directory / f"{name}.json", js)  # for humans: load_checkpoint reads the copy inside
    atomic_save_safetensors(directory / f"{name}.safetensors", tensors, header)
    return directory / f"{name}.safetensors"


def has_checkpoint(directory: str | os.PathLike, name: str = "last") -> bool:
    directory = Path(directory)
    return (directory / f"{name}.safetensors").is_file() or (directory / f"{name}.json").is_file()


def load_checkpoint(directory: str | os.PathLike, name: str = "last", device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint` (safetensors: no code is executed)."""
    from fdalign.io import read_safetensors

    directory = Path(directory)
    st, js_path = directory / f"{name}.safetensors", directory / f"{name}.json"
    if not st.is_file():
        raise FDAlignError(
            f"no checkpoint to resume from in {directory} (need {st.name}); drop --resume to start a new run"
        )
    tensors, meta = read_safetensors(
        st,
        "checkpoint file",
        device=str(device),
        fix="delete the run's checkpoint folder and train again without --resume",
    )
    try:
        if "state" in meta:
            js = json.loads(meta["state"])
        else:  # written before the JSON moved inside the safetensors file: the pair must match
            js = json.loads(js_path.read_text(encoding="utf-8"))
    except Exception as e:
        raise FDAlignError(f"checkpoint in {directory} is unreadable ({e}); drop --resume to start over") from None
    if not isinstance(js, dict) or js.get("format") != CHECKPOINT_FORMAT or meta.get("token") != js.get("token"):
        raise FDAlignError(
            f"checkpoint files in {directory} do not belong together (interrupted while saving?); "
            "delete the checkpoint folder and drop --resume to start over"
        )

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

    opt = None
    if js.get("optimizer") is not None:
        opt = unflatten_optimizer_state(tensors, js["optimizer"])
    return Checkpoint(
        epoch=int(js["epoch"]),
        step=int(js["step"]),
        meta=js,
        encoder=part("encoder."),
        head=part("head."),
        optimizer=opt,
        rng_tensors={k: v.cpu() for k, v in tensors.items() if k.startswith("rng.")},
    )
