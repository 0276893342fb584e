"""A content-addressed cache of evaluation pixels (uint8, after resize and centre crop), shared by a sweep.

Every run of a sweep decodes the same test and OOD images with the same preprocessing; decoding a JPEG,
resizing and cropping it costs far more than reading ``3 x 224 x 224`` bytes back. An entry is keyed like
the feature cache's (:mod:`fdalign.eval.featcache`):

- the images' content hashes, their order and labels,
- the description of the PIL part of the eval transform (everything before ``ToTensor``: resize size and
  interpolation, crop size) -- the normalisation is not in the key: it runs on the tensor afterwards
  (:func:`normalise`), so CLIP models that share a resolution share the pixels.

An entry is ``<root>/<key[:2]>/<key>.npy`` (``uint8 [N, 3, H, W]``, read memory-mapped) and ``<key>.json``
(the key, the shape, the labels, the ``.npy`` file's sha256, the seconds decoding took). The array is
filled in a temp file beside it and renamed into place, then the JSON is written atomically
(:mod:`fdalign.io`): a reader never sees half an entry. A worker filling an entry holds its lock
(:func:`fdalign.io.entry_lock`), so a second one asking for it meanwhile waits and reads it. The sha256 is
checked the first time a process reads an entry; one that fails it is recomputed, and a warning says so.

With a budget (``--pixel-cache-budget GB``), the least recently used entries (by the time of their last
hit) are deleted once the entries' total passes it. The cache is on while :func:`enabled` is active (a
sweep wraps its cells in it, OUT/cache/pixels) or when ``$FDALIGN_PIXEL_CACHE`` names a folder;
``enabled(None)`` (``--no-pixel-cache``) switches it off.
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

import numpy as np
import torch

from fdalign.io import file_sha256

CACHE_FORMAT = "fdalign-pixels/1"
ENV = "FDALIGN_PIXEL_CACHE"
BUDGET_ENV = "FDALIGN_PIXEL_CACHE_BUDGET"  # GB, for the cache named by $FDALIGN_PIXEL_CACHE
_OFF = object()
_active: list = []  # a stack of PixelCache (or _OFF) set by enabled()
_verified: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) -> sha256 found: each entry is hashed once per process


@dataclass
class PixelStats:
    """What the cache did in this process: lookups that hit, missed or found a damaged entry, the bytes
    read from and written to it, entries evicted, and the decoding seconds the hits saved; ``decoded``
    counts the images decoded per set (0 for a set read from the cache)."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    evicted: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds_saved: float = 0.0
    decoded: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "corrupt": self.corrupt,
            "evicted": self.evicted,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "seconds_saved": round(self.seconds_saved, 2),
            "decoded": dict(self.decoded),
        }

    def line(self) -> str:
        """One line for stdout."""
        return (
            f"pixel cache: {self.hits} hits, {self.misses} misses, {self.corrupt} damaged entries recomputed, "
            f"{self.bytes_read / 1e6:.1f} MB read, {self.bytes_written / 1e6:.1f} MB written, "
            f"{self.seconds_saved:.1f} s of decoding saved"
        )


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return str(path), st.st_size, st.st_mtime_ns, st.st_ino


class PixelCache:
    """Entries ``<root>/<key[:2]>/<key>.npy`` + ``.json``; ``budget`` in bytes (None: unbounded)."""

    def __init__(self, root: str | os.PathLike, budget: float | None = None):
        self.root = Path(root)
        self.budget = None if budget is None else int(budget)
        self.stats = PixelStats()

    def path(self, key: str, suffix: str = ".npy") -> Path:
        return self.root / key[:2] / f"{key}{suffix}"

    def get(self, key: str) -> tuple[np.ndarray, torch.Tensor] | None:
        """``(pixels uint8 [N, 3, H, W] memory-mapped, labels [N])``, or None: absent, or damaged (warned)."""
        meta_path, arr_path = self.path(key, ".json"), self.path(key)
        if not meta_path.is_file() or not arr_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
                raise ValueError("it holds another entry")
            stamp = _stamp(arr_path)
            if _verified.get(stamp) != meta["sha256"]:
                if file_sha256(arr_path) != meta["sha256"]:
                    raise ValueError("its pixels fail their sha256")
                _verified[stamp] = meta["sha256"]
            arr = np.load(arr_path, mmap_mode="r")
            if list(arr.shape) != meta["shape"] or arr.dtype != np.uint8 or len(meta["labels"]) != arr.shape[0]:
                raise ValueError(f"its array is {arr.dtype} {list(arr.shape)}, not uint8 {meta['shape']}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.stats.corrupt += 1
            warnings.warn(f"pixel cache entry {arr_path} is damaged ({e}); recomputing it", stacklevel=2)
            return None
        self.stats.hits += 1
        self.stats.seconds_saved += float(meta.get("seconds", 0.0))
        with contextlib.suppress(OSError):  # the time of the last use orders the evictions
            os.utime(meta_path)
        return arr, torch.tensor(meta["labels"], dtype=torch.int64)

    @contextlib.contextmanager
    def computing(self, key: str) -> Iterator[None]:
        """Hold the entry's lock while it is decoded and written (one writer per entry)."""
        from fdalign.io import entry_lock

        with entry_lock(self.path(key, ".lock")):
            yield

    def writer(self, key: str, shape: tuple[int, ...]) -> _EntryWriter | None:
        """A temp array to fill batch by batch, or None when the entry alone would pass the budget."""
        nbytes = int(np.prod(shape))
        if self.budget is not None and nbytes > self.budget:
            warnings.warn(
                f"pixel cache {self.root}: an entry of {nbytes / 1e9:.2f} GB is larger than the budget "
                f"({self.budget / 1e9:.2f} GB); not cached",
                stacklevel=2,
            )
            return None
        try:
            return _EntryWriter(self, key, shape)
        except OSError as e:  # a full or read-only disk costs the reuse, not the run
            warnings.warn(f"pixel cache {self.root}: entry not written ({e})", stacklevel=2)
            return None

    def entries(self) -> list[tuple[float, int, str]]:
        """``[(last use, bytes, key)]`` of every entry, oldest first."""
        out = []
        for meta_path in self.root.glob("*/*.json"):
            key = meta_path.stem
            try:
                used = meta_path.stat().st_mtime
                size = meta_path.stat().st_size + self.path(key).stat().st_size
            except OSError:
                continue
            out.append((used, size, key))
        return sorted(out)

    def evict(self, keep: str | None = None) -> None:
        """Delete the least recently used entries until the total fits the budget (``keep`` stays; an entry
        another process is writing is skipped)."""
        import filelock

        if self.budget is None:
            return
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        for _, size, key in entries:
            if total <= self.budget:
                break
            if key == keep:
                continue
            lock = filelock.FileLock(str(self.path(key, ".lock")), timeout=0, is_singleton=False)
            try:
                lock.acquire()
            except (filelock.Timeout, OSError):
                continue
            try:  # the JSON first: without it the entry is absent (a miss), never half there
                for suffix in (".json", ".npy"):
                    with contextlib.suppress(FileNotFoundError):
                        self.path(key, suffix).unlink()
            finally:
                lock.release()
            total -= size
            self.stats.evicted += 1


class _EntryWriter:
    """Fills ``.<key>.npy.<pid>.tmp`` (a memory-mapped ``.npy``), then renames it into place and writes the
    JSON beside it; :meth:`abort` removes the temp file."""

    def __init__(self, cache: PixelCache, key: str, shape: tuple[int, ...]):
        self.cache, self.key, self.shape = cache, key, tuple(int(s) for s in shape)
        final = cache.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f".{final.name}.*.tmp"):  # a killed writer's; we hold the entry's lock
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self.tmp = final.parent / f".{final.name}.{os.getpid()}.tmp"
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8, shape=self.shape)
        self.filled = 0

    def write(self, start: int, pixels: torch.Tensor) -> None:
        self.array[start : start + pixels.shape[0]] = pixels.numpy()
        self.filled += pixels.shape[0]

    def commit(self, labels: torch.Tensor, seconds: float, what: dict) -> None:
        from fdalign.io import atomic_write_json

        try:
            if self.filled != self.shape[0]:
                raise OSError(f"{self.filled} of {self.shape[0]} images written")
            self.array.flush()
            del self.array
            digest = file_sha256(self.tmp)
            os.chmod(self.tmp, 0o644)
            final = self.cache.path(self.key)
            os.replace(self.tmp, final)
            meta = {
                "format": CACHE_FORMAT,
                "key": self.key,
                "shape": list(self.shape),
                "sha256": digest,
                "labels": [int(v) for v in labels.tolist()],
                "seconds": round(seconds, 3),
                "what": what,
            }
            atomic_write_json(self.cache.path(self.key, ".json"), meta)
            self.cache.stats.bytes_written += final.stat().st_size
            _verified[_stamp(final)] = digest  # written by this process: no need to hash it again
        except OSError as e:
            warnings.warn(f"pixel cache {self.cache.root}: entry not written ({e})", stacklevel=2)
            self.abort()
            return
        self.cache.evict(keep=self.key)

    def abort(self) -> None:
        with contextlib.suppress(AttributeError):
            del self.array
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def active() -> PixelCache | None:
    """The cache in force: the innermost :func:`enabled`, else ``$FDALIGN_PIXEL_CACHE``, else none."""
    if _active:
        return None if _active[-1] is _OFF else _active[-1]
    root = os.environ.get(ENV)
    if root:
        budget = os.environ.get(BUDGET_ENV)
        _active.append(PixelCache(root, gigabytes(budget) if budget else None))  # one per process: stats add up
        return _active[-1]
    return None


def gigabytes(value) -> int:
    """``--pixel-cache-budget`` (GB, a float) in bytes."""
    from fdalign.errors import FDAlignError

    try:
        gb = float(value)
    except (TypeError, ValueError):
        gb = -1.0
    if not gb > 0:
        raise FDAlignError(f"--pixel-cache-budget must be a positive number of GB, got {value!r}")
    return int(gb * 1e9)


@contextlib.contextmanager
def enabled(root: str | os.PathLike | None, budget_gb: float | None = None) -> Iterator[PixelCache | None]:
    """Use the cache at ``root`` for the block (``None``: no cache, whatever the environment says)."""
    cache = PixelCache(root, gigabytes(budget_gb) if budget_gb is not None else None) if root is not None else None
    _active.append(cache if cache is not None else _OFF)
    try:
        yield cache
    finally:
        _active.pop()


# ----------------------------------------------------------------------------------------------
# The transform split in two: PIL steps (cached) and the tensor steps (run on the batch)


@dataclass
class SplitTransform:
    """``pil``: the steps before ``ToTensor`` (decode -> resize -> crop -> RGB), whose uint8 output is cached;
    ``normalize``: the ``Normalize`` steps after it (none: ``ToTensor``'s scaling only)."""

    pil: object
    normalize: list
    description: str


def split_transform(transform) -> SplitTransform | None:
    """Split a torchvision ``Compose([...PIL steps..., ToTensor(), Normalize(...)*])``; None for any other
    transform (then nothing is cached and the dataset's transform runs as it is). A PIL step whose repr
    cannot key a cache (a lambda) also gives None."""
    from torchvision import transforms as T

    from fdalign.eval.featcache import describe_transform

    steps = getattr(transform, "transforms", None)
    if not isinstance(transform, T.Compose) or not steps:
        return None
    at = [i for i, s in enumerate(steps) if isinstance(s, T.ToTensor)]
    if len(at) != 1 or not all(isinstance(s, T.Normalize) for s in steps[at[0] + 1 :]):
        return None
    pil = T.Compose(list(steps[: at[0]]))
    description = describe_transform(pil)
    if description is None:
        return None
    return SplitTransform(pil, list(steps[at[0] + 1 :]), description)


def to_uint8(image) -> torch.Tensor:
    """A PIL image -> ``uint8 [C, H, W]``, the bytes ``ToTensor`` would scale by 1/255."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"the eval transform gives a {image.mode} image, not 8-bit")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def normalise(pixels: torch.Tensor, split: SplitTransform) -> torch.Tensor:
    """``uint8 [B, C, H, W]`` -> what ``ToTensor`` then the ``Normalize`` steps give each image, bitwise:
    the same elementwise float32 operations (``/ 255``, ``- mean``, ``/ std``) in the same order."""
    x = pixels.to(torch.get_default_dtype()).div(255)
    for step in split.normalize:
        x = step(x)
    return x


class PixelDataset(torch.utils.data.Dataset):
    """``dataset`` (an :class:`~fdalign.data.ImageDataset`) with only the PIL steps: ``(uint8 [C,H,W], label)``.

    JPEG files are decoded by simplejpeg when this installation's simplejpeg gives PIL's pixels exactly
    (:func:`fast_jpeg_is_exact`), about 3x faster; any other file, or a JPEG simplejpeg cannot read, goes
    through the dataset's own PIL path (and its errors)."""

    def __init__(self, dataset, split: SplitTransform):
        from fdalign.data import ImageDataset

        # its unreadable-file errors and its JPEG draft mode (opt-in) included
        self.images = ImageDataset(dataset.split, split.pil, draft=getattr(dataset, "draft", None))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        sample = self.images.split.samples[index]
        path = self.images.split.resolve(sample)
        jpeg = str(path).lower().endswith(_JPEG)
        exact = jpeg and not self.images.draft and fast_jpeg_is_exact()  # checked at the first JPEG
        image = _fast_jpeg(path) if exact else None
        if image is None:
            image, label = self.images[index]
        else:
            image, label = self.images.transform(image), sample.label
        return to_uint8(image), label


_JPEG = (".jpg", ".jpeg", ".jpe")
_EXACT_COLOURS = ("YCbCr", "Gray")  # CMYK / YCCK: PIL's conversion to RGB differs (Adobe inversion)
_fast_exact: list[bool] = []


def _fast_jpeg(path) -> object | None:
    """The RGB PIL image of a JPEG decoded by simplejpeg, or None (not a JPEG, another colour space, unreadable)."""
    if not str(path).lower().endswith(_JPEG):
        return None
    try:
        import simplejpeg
        from PIL import Image

        with open(path, "rb") as fh:
            data = fh.read()
        if simplejpeg.decode_jpeg_header(data)[2] not in _EXACT_COLOURS:
            return None
        return Image.fromarray(simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False))
    except Exception:  # the PIL path reads it, or raises its one-line error naming the file
        return None


def fast_jpeg_is_exact() -> bool:
    """Whether simplejpeg decodes to PIL's ``convert("RGB")`` pixels bit for bit here: checked once per
    process on JPEGs of every chroma subsampling (4:4:4, 4:2:2, 4:2:0), baseline and progressive, colour
    and grey. Both wrap libjpeg-turbo with the same IDCT and upsampling; a build that differs is not used."""
    if not _fast_exact:
        _fast_exact.append(_check_fast_jpeg())
    return _fast_exact[0]


def _check_fast_jpeg() -> bool:
    import io

    try:
        import simplejpeg
        from PIL import Image
    except ImportError:
        return False
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
    noisy = rng.integers(0, 256, (67, 93, 3), dtype=np.uint8)
    for pixels in (smooth, noisy, noisy[:, :, 0]):
        for subsampling in (0, 1, 2):
            for progressive in (False, True):
                buf = io.BytesIO()
                Image.fromarray(pixels).save(buf, "JPEG", quality=87, subsampling=subsampling, progressive=progressive)
                data = buf.getvalue()
                want = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                try:
                    got = simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False)
                except Exception:
                    return False
                if got.shape != want.shape or not np.array_equal(got, want):
                    return False
    return True


def cache_key(dataset, split: SplitTransform) -> tuple[str, dict] | None:
    """``(key, what)`` of ``dataset``'s pixels under ``split``'s PIL steps, or None: not an ImageDataset."""
    from fdalign.eval.featcache import images_hash

    images = images_hash(dataset)
    if images is None:
        return None
    what = {"format": CACHE_FORMAT, "images": images, "n": len(dataset), "preprocessing": split.description}
    if getattr(dataset, "draft", None):  # JPEG DCT downscaling: other pixels (the exact key stays as it was)
        what["jpeg_draft"] = dataset.draft
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest(), what


def batches(
    dataset,
    batch_size: int,
    device,
    num_workers: int | None = None,
    progress: bool = False,
    desc: str = "images",
    name: str | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images [B, 3, H, W] normalised on ``device``, labels [B] int64)`` over ``dataset`` in order: from
    the active cache's entry when there is one, else decoded (and written to the cache when it is on).

    Decoding goes through :class:`PixelDataset` (uint8 across the workers, a quarter of float32's bytes)
    and :func:`normalise` on the device. A dataset whose transform cannot be split (:func:`split_transform`)
    runs its own transform, as before."""
    from torch.utils.data import DataLoader

    from fdalign.options import default_workers

    device = torch.device(device)
    workers = default_workers() if num_workers is None else num_workers
    split = split_transform(getattr(dataset, "transform", None))
    if split is None or not hasattr(dataset, "split"):
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda", shuffle=False
        )
        for images, y in _bar(loader, progress, desc):
            yield images.to(device, non_blocking=True), torch.as_tensor(y, dtype=torch.int64)
        return
    cache = active()
    keyed = cache_key(dataset, split) if cache is not None else None
    name = name or getattr(dataset.split, "name", "?")
    if keyed is None:
        yield from _decoded(dataset, split, batch_size, device, workers, progress, desc, name, None, None)
        return
    key, what = keyed
    seen = _stamp(cache.path(key, ".json"))
    hit = cache.get(key)
    if hit is None:
        with cache.computing(key):  # a second worker asking for the same entry waits for it, then reads it
            hit = cache.get(key) if _stamp(cache.path(key, ".json")) != seen else None  # written meanwhile
            if hit is None:
                cache.stats.misses += 1
                yield from _decoded(dataset, split, batch_size, device, workers, progress, desc, name, cache, keyed)
                return
    yield from _from_cache(hit, split, batch_size, device, cache, progress, desc)


def _bar(it, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, disable=not progress, leave=False)


def _from_cache(hit, split: SplitTransform, batch_size: int, device, cache: PixelCache, progress: bool, desc: str):
    arr, labels = hit
    starts = range(0, arr.shape[0], batch_size)
    for i in _bar(starts, progress, desc):
        pixels = torch.from_numpy(np.array(arr[i : i + batch_size]))  # a copy: the map stays read-only
        cache.stats.bytes_read += pixels.numel()
        if device.type == "cuda":
            pixels = pixels.pin_memory()
        yield normalise(pixels.to(device, non_blocking=True), split), labels[i : i + batch_size]


def _decoded(dataset, split, batch_size, device, workers, progress, desc, name, cache, keyed):
    """Decode ``dataset`` once; with ``cache``, fill the entry ``keyed`` as the batches go by."""
    from torch.utils.data import DataLoader

    loader = DataLoader(
        PixelDataset(dataset, split),
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        shuffle=False,
    )
    writer, labels, start, t0 = None, [], 0, time.perf_counter()
    try:
        for pixels, y in _bar(loader, progress, desc):
            if cache is not None and writer is None and start == 0:
                writer = cache.writer(keyed[0], (len(dataset), *pixels.shape[1:]))
            if writer is not None:
                writer.write(start, pixels)
            start += pixels.shape[0]
            labels.append(torch.as_tensor(y, dtype=torch.int64))
            yield normalise(pixels.to(device, non_blocking=True), split), labels[-1]
        if cache is not None:
            cache.stats.decoded[name] = cache.stats.decoded.get(name, 0) + start
        if writer is not None:
            writer.commit(torch.cat(labels), time.perf_counter() - t0, keyed[1])
            writer = None
    finally:
        if writer is not None:  # the pass stopped early: no entry
            writer.abort()


__all__ = [
    "CACHE_FORMAT",
    "ENV",
    "BUDGET_ENV",
    "PixelStats",
    "PixelCache",
    "active",
    "enabled",
    "gigabytes",
    "SplitTransform",
    "split_transform",
    "to_uint8",
    "normalise",
    "PixelDataset",
    "fast_jpeg_is_exact",
    "cache_key",
    "batches",
]
