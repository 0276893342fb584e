"""A content-addressed cache of a frozen encoder's image features, shared by the runs of a sweep.

Zero-shot CLIP is evaluated by every run of a sweep on the same test and OOD sets; the cache heads
encode the same few-shot images with the same frozen encoder for every method. An entry is keyed by

- the encoder's weights (sha256 over its state dict: names, dtypes, shapes, bytes),
- the images' content hashes, their order and labels,
- the preprocessing (the eval transform's repr: size, crop, interpolation, mean / std), the
  precision and the device type,

so a hit is the features a fresh evaluation would compute. Only encoders marked with :func:`frozen`
(the pretrained encoder of zero-shot rows, of the heads, of a linear probe) are looked up or stored:
a fine-tuned encoder's features are never reused, so they are not worth the disk.

Entries are safetensors written atomically (:func:`fdalign.io.atomic_save_safetensors`): a reader
never sees half a file. A worker computing an entry holds its lock file (``<entry>.lock``), so a
second worker asking for it meanwhile waits and reads it instead of running the encoder again. Each
entry carries its content hash; one that fails it (or does not parse) is recomputed, never used.

The cache is on while :func:`enabled` is active (a sweep wraps its cells in it) or when
``$FDALIGN_FEATURE_CACHE`` names a folder; ``enabled(None)`` (``--no-feature-cache``) switches it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

CACHE_FORMAT = "fdalign-features/1"
ENV = "FDALIGN_FEATURE_CACHE"
_MARK = "_fdalign_frozen_fingerprint"
_OFF = object()
_active: list = []  # a stack of FeatureCache (or _OFF) set by enabled()
_file_digests: dict[tuple, str] = {}  # (path, size, mtime_ns) -> sha256: each image is read once per process


@dataclass
class CacheStats:
    """What the cache did in this process: lookups that hit, missed, or found a corrupt entry, and
    the encoder seconds the hits saved (each entry records how long it took to compute)."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    seconds_saved: float = 0.0
    passes: dict = field(default_factory=dict)  # split name -> encoder passes computed (misses), for counting

    def to_json(self) -> dict:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "seconds_saved": round(self.seconds_saved, 2),
            "passes": dict(self.passes),
        }


class FeatureCache:
    """Entries ``<root>/<key[:2]>/<key>.safetensors`` holding ``features [N, D]`` and ``labels [N]``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.stats = CacheStats()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        from fdalign.errors import FDAlignError
        from fdalign.io import read_safetensors

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            tensors, meta = read_safetensors(p, "feature cache entry", require_hash=True)
            if meta.get("key") != key or set(tensors) != {"features", "labels"}:
                raise FDAlignError(f"feature cache entry {p} holds another entry")
        except FDAlignError as e:
            self.stats.corrupt += 1
            warnings.warn(f"{e}; recomputing it", stacklevel=2)
            return None
        self.stats.hits += 1
        self.stats.seconds_saved += float(meta.get("seconds", 0.0))
        return tensors["features"], tensors["labels"]

    @contextlib.contextmanager
    def computing(self, key: str) -> Iterator[None]:
        """Hold the entry's lock (:func:`fdalign.io.entry_lock`) while computing it."""
        from fdalign.io import entry_lock

        with entry_lock(str(self.path(key)) + ".lock"):
            yield

    def put(self, key: str, features: torch.Tensor, labels: torch.Tensor, seconds: float, what: dict) -> None:
        from fdalign.io import atomic_save_safetensors

        try:
            atomic_save_safetensors(
                self.path(key),
                {"features": features, "labels": labels},
                metadata={"key": key, "seconds": f"{seconds:.3f}", "what": json.dumps(what)},
            )
        except OSError as e:  # a full or read-only disk costs the reuse, not the run
            warnings.warn(f"feature cache {self.root}: entry not written ({e})", stacklevel=2)


def active() -> FeatureCache | None:
    """The cache in force: the innermost :func:`enabled`, else ``$FDALIGN_FEATURE_CACHE``, else none."""
    if _active:
        return None if _active[-1] is _OFF else _active[-1]
    root = os.environ.get(ENV)
    if root:
        _active.append(FeatureCache(root))  # one object per process, so its stats add up
        return _active[-1]
    return None


@contextlib.contextmanager
def enabled(root: str | os.PathLike | None) -> Iterator[FeatureCache | None]:
    """Use the cache at ``root`` for the block (``None``: no cache, whatever the environment says)."""
    cache = FeatureCache(root) if root is not None else None
    _active.append(cache if cache is not None else _OFF)
    try:
        yield cache
    finally:
        _active.pop()


def frozen(module: nn.Module) -> nn.Module:
    """Mark ``module`` as an encoder whose weights no longer change: its features may be cached."""
    setattr(module, _MARK, None)
    return module


def is_frozen(module: nn.Module) -> bool:
    return hasattr(module, _MARK)


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes) of ``module``."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _frozen_fingerprint(module: nn.Module) -> str:
    fp = getattr(module, _MARK, None)
    if fp is None:  # computed once: the mark promises the weights no longer change
        fp = weights_fingerprint(module)
        setattr(module, _MARK, fp)
    return fp


def _file_digest(path: str) -> str:
    from fdalign.data.hashing import file_sha256

    st = os.stat(path)
    k = (path, st.st_size, st.st_mtime_ns)
    if k not in _file_digests:
        _file_digests[k] = file_sha256(path)
    return _file_digests[k]


def images_hash(dataset) -> str | None:
    """sha256 over the images' content hashes and labels, in order; None for a dataset that cannot say
    (not an :class:`~fdalign.data.ImageDataset`)."""
    split = getattr(dataset, "split", None)
    if split is None or not hasattr(split, "samples"):
        return None
    h = hashlib.sha256()
    for s in split.samples:
        h.update(f"{_file_digest(str(split.resolve(s)))}|{s.label}\n".encode())
    return h.hexdigest()


def dataset_key(dataset) -> dict | None:
    """What identifies a dataset's images and preprocessing; None for a dataset that cannot say (not an
    :class:`~fdalign.data.ImageDataset`, or a transform with a lambda), which is then never cached."""
    transform = getattr(dataset, "transform", None)
    if transform is None:
        return None
    preprocessing = describe_transform(transform)
    if preprocessing is None:
        return None
    images = images_hash(dataset)
    if images is None:
        return None
    key = {"images": images, "n": len(dataset.split.samples), "preprocessing": preprocessing}
    if getattr(dataset, "draft", None):  # JPEG DCT downscaling: other pixels (the exact key stays as it was)
        key["jpeg_draft"] = dataset.draft
    return key


def describe_transform(transform) -> str | None:
    """The transform's repr without memory addresses (``<function f at 0x7f..>``), which differ between
    processes: the workers of a sweep must agree on the key. None when a step is a lambda or a nested
    function: its repr names it but not what it does, so two of them could share a key."""
    import re

    text = repr(transform)
    if "<lambda>" in text or "<locals>" in text:
        return None
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def cache_key(encoder: nn.Module, dataset, precision: str, device) -> tuple[str, dict] | None:
    data = dataset_key(dataset)
    if data is None:
        return None
    what = {
        "format": CACHE_FORMAT,
        "encoder": _frozen_fingerprint(encoder),
        **data,
        "precision": precision,
        "device": torch.device(device).type,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest(), what


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@dataclass
class Lookup:
    """A frozen encoder's entry for a dataset: ``hit`` (``features [N, D], labels [N]``) or None, and what
    storing it needs (``seen``: the entry file's stamp when looked up, to tell a write made meanwhile)."""

    cache: FeatureCache
    key: str
    what: dict
    seen: tuple | None
    hit: tuple | None

    def recheck(self) -> tuple | None:
        """The entry, if another process wrote it since the lookup (call it holding the entry's lock)."""
        return self.cache.get(self.key) if _stamp(self.cache.path(self.key)) != self.seen else None

    def store(self, features, labels, seconds: float, name: str) -> None:
        self.cache.stats.misses += 1
        self.cache.stats.passes[name] = self.cache.stats.passes.get(name, 0) + 1
        self.cache.put(self.key, features, labels, seconds, self.what)


def lookup(encoder: nn.Module, dataset, precision: str, device) -> Lookup | None:
    """The active cache's entry of ``encoder`` on ``dataset``; None when nothing is cached for them (no cache,
    an encoder not :func:`frozen`, a dataset without a key)."""
    cache = active() if is_frozen(encoder) else None
    keyed = cache_key(encoder, dataset, precision, device) if cache is not None else None
    if keyed is None:
        return None
    key, what = keyed
    seen = _stamp(cache.path(key))
    return Lookup(cache, key, what, seen, cache.get(key))


def extract_features(
    encoder: nn.Module,
    dataset,
    batch_size: int = 256,
    device="cpu",
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = True,
    desc: str = "features",
):
    """:func:`fdalign.eval.features.extract_features` (``features [N, D]``, ``labels [N]``), read from
    the active cache when ``encoder`` is :func:`frozen` and the entry exists, else computed (and stored)."""
    from fdalign.eval import features as F

    kw = dict(
        batch_size=batch_size, device=device, num_workers=num_workers, precision=precision, progress=progress, desc=desc
    )
    cache = active() if is_frozen(encoder) else None
    keyed = cache_key(encoder, dataset, precision, device) if cache is not None else None
    if keyed is None:
        return F.extract_features(encoder, dataset, **kw)
    key, what = keyed
    seen = _stamp(cache.path(key))
    hit = cache.get(key)
    if hit is not None:
        return hit
    with cache.computing(key):  # a second worker asking for the same entry waits for it, then reads it
        hit = cache.get(key) if _stamp(cache.path(key)) != seen else None  # written meanwhile
        if hit is not None:
            return hit
        t0 = time.perf_counter()
        feats, labels = F.extract_features(encoder, dataset, **kw)
        cache.stats.misses += 1
        name = getattr(dataset.split, "name", "?")
        cache.stats.passes[name] = cache.stats.passes.get(name, 0) + 1
        cache.put(key, feats, labels, time.perf_counter() - t0, what)
    return feats, labels


__all__ = [
    "CACHE_FORMAT",
    "ENV",
    "CacheStats",
    "FeatureCache",
    "active",
    "enabled",
    "frozen",
    "is_frozen",
    "weights_fingerprint",
    "dataset_key",
    "images_hash",
    "describe_transform",
    "lookup",
    "cache_key",
    "extract_features",
]
