"""Atomic file writes.

Every file fdalign writes (checkpoints, splits, reports, caches) goes through here: the bytes go to a
temp file in the target's folder, then ``os.replace`` swaps it in, so a run killed mid-write leaves
the previous version intact instead of a truncated file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save ``tensors`` as safetensors. They are moved to the CPU, made contiguous and un-aliased
    (safetensors refuses tensors that share storage, e.g. tied weights)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Fill a temp folder beside ``path``; when the block succeeds it becomes ``path`` by renaming.

    A failure removes the temp folder and leaves ``path`` as it was. ``replace=True`` swaps out an
    existing ``path`` (which is then deleted); otherwise an existing ``path`` is a FileExistsError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists() and not path.is_symlink():
            os.replace(tmp, path)
            return
        if not replace:
            raise FileExistsError(f"{path} exists")
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
        os.replace(path, old / "previous")  # a rename on the same file system, like the one below
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old / "previous", path)  # put the previous version back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; a missing or malformed file is an :class:`FDAlignError` naming ``what``."""
    from fdalign.errors import FDAlignError

    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        raise FDAlignError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise FDAlignError(f"{what} {path} is a folder, not a file") from None
    except json.JSONDecodeError as e:
        raise FDAlignError(f"{what} {path} is not valid JSON: {e}") from None


def read_safetensors(
    path: str | os.PathLike, what: str = "file", device: str = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, loaded without executing code."""
    from safetensors import safe_open

    from fdalign.errors import FDAlignError

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:
        raise FDAlignError(f"{what} {path} is not a readable safetensors file ({e})") from None
