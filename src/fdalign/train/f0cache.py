"""A cache of the frozen encoder's spurious distributions, shared by every run that would recompute them.

With :class:`~fdalign.data.views.SeededViews` the augmented view of image ``i`` in epoch ``e`` is a
function of ``(seed, e, i)``. So ``log P_spur(view; f_0)`` depends only on the seed, the data and
its transform, ``f_0``'s weights, the spurious prototypes and the temperature — not on alpha, beta,
the learning rate or anything else a sweep varies. The first run stores it per epoch
(``[N, k]`` float32, 16-shot ImageNet x 60 epochs x k=20 is about 77 MB); later runs read it and
never run ``f_0``. The key hashes every ingredient, so a stale entry is never read: it simply
lives under another key.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from fdalign.errors import FDAlignError
from fdalign.io import atomic_save_safetensors, atomic_write_json, read_safetensors

CACHE_FORMAT = "fdalign-f0-cache/1"


def state_fingerprint(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def f0_cache_key(
    *,
    f0_fingerprint: str,
    spurious: torch.Tensor,
    scale: float,
    normalize_prototypes: bool,
    seed: int,
    data_key: str,
    precision: str,
) -> tuple[str, dict]:
    """``(key, ingredients)``: the key is the sha256 of the ingredients, which are kept for humans."""
    proto = spurious.detach().to("cpu", torch.float32).contiguous()
    ingredients = {
        "format": CACHE_FORMAT,
        "f0": f0_fingerprint,
        "seed": int(seed),
        "data": data_key,
        "spurious": hashlib.sha256(proto.numpy().tobytes()).hexdigest(),
        "spurious_shape": list(proto.shape),
        "scale": repr(float(scale)),
        "normalize_prototypes": bool(normalize_prototypes),
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(ingredients, sort_keys=True).encode()).hexdigest()[:32], ingredients


class F0Cache:
    """``<root>/<key>/epoch_<e>.safetensors`` holding ``log_p0`` ``[N, k]`` for epoch ``e`` (0-based)."""

    def __init__(self, root: str | os.PathLike, key: str, ingredients: dict, n: int, k: int):
        self.dir = Path(root).expanduser() / key
        self.key = key
        self.ingredients, self.n, self.k = ingredients, int(n), int(k)
        self.hits = 0  # epochs read from the cache (reported by the trainer)
        self.misses = 0  # epochs f0 had to compute
        self.writes = 0
        self.writable = True

    def _path(self, epoch: int) -> Path:
        return self.dir / f"epoch_{epoch:04d}.safetensors"

    def load(self, epoch: int) -> torch.Tensor | None:
        t = self._read(epoch)
        if t is None:
            self.misses += 1
        else:
            self.hits += 1
        return t

    def _read(self, epoch: int) -> torch.Tensor | None:
        path = self._path(epoch)
        if not path.is_file():
            return None
        try:  # the content hash is required: a damaged entry is recomputed, never trusted
            tensors, meta = read_safetensors(path, "f0 cache file", require_hash=True, fix="recomputing it")
            t = tensors["log_p0"]
        except Exception as e:
            msg = str(e) if isinstance(e, FDAlignError) else f"f0 cache file {path} is unreadable ({e})"
            warnings.warn(msg if msg.endswith("recomputing it") else f"{msg}; recomputing it", stacklevel=3)
            return None
        problem = None
        wrote = (meta.get("key"), meta.get("epoch"))
        if wrote != (self.key, str(epoch)):  # another epoch's (or key's) entry copied over this one
            problem = f"it was written for key {wrote[0] or '(none)'} epoch {wrote[1] or '(none)'}"
        elif tuple(t.shape) != (self.n, self.k):
            problem = f"shape {tuple(t.shape)}, expected ({self.n}, {self.k})"
        elif not torch.isfinite(t).all():
            problem = "it holds NaN or inf"
        elif (t > 1e-6).any() or ((t.double().exp().sum(dim=1) - 1).abs() > 1e-3).any():
            problem = "its rows are not log-probabilities (each row's exp must sum to 1)"
        if problem:
            warnings.warn(f"ignoring f0 cache file {path}: {problem}; recomputing it", stacklevel=3)
            return None
        return t

    def save(self, epoch: int, log_p0: torch.Tensor) -> None:
        """Store an epoch; the cache is optional, so a failed write (disk full, read-only) warns and stops
        further writes instead of stopping training."""
        if not self.writable or not torch.isfinite(log_p0).all():  # an epoch that missed images is not stored
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not (self.dir / "key.json").is_file():
                atomic_write_json(self.dir / "key.json", self.ingredients)
            atomic_save_safetensors(
                self._path(epoch),
                {"log_p0": log_p0.detach().to("cpu", torch.float32).contiguous()},
                {"format": CACHE_FORMAT, "key": self.key, "epoch": str(epoch)},  # under the content hash
            )
        except OSError as e:
            self.writable = False
            warnings.warn(
                f"could not write the f0 cache in {self.dir} ({e}); training goes on without storing f0's answers",
                stacklevel=2,
            )
            return
        self.writes += 1

    def report(self) -> str:
        """One line saying whether the cache hit, e.g. for the end of a run."""
        used = self.hits + self.misses
        if self.hits == used:
            verdict = "hit"
        elif self.hits == 0:
            verdict = "miss"
        else:
            verdict = "partial hit"
        return (
            f"f0 cache {verdict}: {self.hits} of {used} epochs read from {self.dir}, {self.misses} computed by f0, "
            f"{self.writes} stored"
        )


__all__ = ["CACHE_FORMAT", "state_fingerprint", "f0_cache_key", "F0Cache"]
