"""Atomic file writes, content hashes and the run-directory lock.

Every file fdalign writes (checkpoints, splits, reports, caches) goes through here: the bytes go to a
temp file in the target's folder, then ``os.replace`` swaps it in, so a run killed mid-write leaves
the previous version intact instead of a truncated file. A full disk is a one-line
:class:`DiskFullError`.

Every safetensors file gets a canonical header (sorted keys: the same tensors give the same bytes)
holding the sha256 of its content (:data:`HASH_KEY`); :func:`read_safetensors` checks it, so a
damaged model, checkpoint or cache entry is never used silently. :func:`run_lock` keeps a second
process out of a run directory (or a sweep cell).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdalign.errors import FDAlignError

if TYPE_CHECKING:  # torch loads on first use: the command line imports this module to build its options
    import torch

# the safetensors metadata key holding the sha256 of the file's canonical header (without this key) + data
HASH_KEY = "fdalign_sha256"
# Every temporary name fdalign writes starts with one of these, so that clearing a killed write's leftovers
# can never match a user's own ``.something.tmp`` or ``.config.old`` (issue 25).
TEMP_PREFIX, OLD_PREFIX = ".fdalign-tmp.", ".fdalign-old."
_TEMP_NAME = re.compile(r"\.fdalign-(?:tmp|old)\..+\.[a-z0-9_]{8}\.tmp")  # + mkstemp's 8 random characters
# The sub-folders of a run directory fdalign writes into (train/run.py's layout, a sweep's eval-heads/,
# meta-training's episodes/): a killed write's temp file is looked for only there, never in a user's folder.
RUN_FOLDERS = ("checkpoint", "model", "splits", "eval-heads", "episodes")
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class DiskFullError(FDAlignError, OSError):
    """A write failed for lack of space: a user-fixable error, and still an OSError for optional caches."""


class RunLockedError(FDAlignError):
    """Another live process holds the lock of a run directory (or a sweep cell)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _FULL:
            raise DiskFullError(
                e.errno,
                f"cannot write {path}: no space left on its disk ({len(data)} bytes "
                "needed); free some space and run the command again (training: with --resume)",
            ) from None
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    # A non-UTF-8 file name arrives as lone surrogates; a report shows it as \udcXX rather than crash.
    return atomic_write_bytes(path, text.encode("utf-8", "backslashreplace"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 1) -> Path:
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # non-UTF-8 file names: \udcXX escapes read back as the same name
        text = json.dumps(obj, indent=indent) + "\n"
    return atomic_write_text(path, text)


def atomic_save_safetensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save ``tensors`` as safetensors. They are moved to the CPU, made contiguous and un-aliased
    (safetensors refuses tensors that share storage, e.g. tied weights)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, with_content_hash(data))


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 or n > len(data) - 8:
        raise ValueError("truncated safetensors header")
    return json.loads(data[8 : 8 + n].decode("utf-8")), data[8 + n :]


def _header_bytes(header: dict) -> bytes:
    # sorted keys: the same tensors and metadata give the same bytes (safetensors' own order varies by process)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes so the data stays aligned


def _content_digest(header: dict, body: bytes) -> str:
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != HASH_KEY}
    h = hashlib.sha256(_header_bytes({**header, "__metadata__": meta}))
    h.update(body)
    return h.hexdigest()


def with_content_hash(data: bytes) -> bytes:
    """A safetensors file's bytes with a canonical (sorted) header whose metadata holds :data:`HASH_KEY`:
    the sha256 of that header without the key, followed by the tensor data."""
    header, body = _split_safetensors(data)
    header["__metadata__"] = dict(header.get("__metadata__") or {}, **{HASH_KEY: _content_digest(header, body)})
    head = _header_bytes(header)
    return len(head).to_bytes(8, "little") + head + body


def content_hash_status(data: bytes) -> str:
    """``"ok"``, ``"missing"`` (written before fdalign hashed its files), ``"bad"`` (changed since) or
    ``"unreadable"`` (not a safetensors file) for a safetensors file's bytes."""
    try:
        header, body = _split_safetensors(data)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (ValueError, UnicodeDecodeError):
        return "unreadable"
    want = (header.get("__metadata__") or {}).get(HASH_KEY)
    if want is None:
        return "missing"
    return "ok" if want == _content_digest(header, body) else "bad"


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB chunks: the one file hash of fdalign."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Fill a temp folder beside ``path``; when the block succeeds it becomes ``path`` by renaming.

    A failure removes the temp folder and leaves ``path`` as it was. ``replace=True`` swaps out an
    existing ``path`` (which is then deleted); otherwise an existing ``path`` is a FileExistsError.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if not path.exists() and not path.is_symlink():
            os.replace(tmp, path)
            return
        if not replace:
            raise FileExistsError(f"{path} exists")
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{OLD_PREFIX}{path.name}.", suffix=".tmp"))
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
    except UnicodeDecodeError as e:
        raise FDAlignError(
            f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason}); it is damaged or not "
            "the file fdalign wrote: restore it or write it again"
        ) from None


def read_safetensors(
    path: str | os.PathLike,
    what: str = "file",
    device: str = "cpu",
    require_hash: bool = False,
    fix: str = "write it again",
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file, loaded without executing code.

    The file is read into memory (never memory-mapped, so a replaced file is not kept alive) and its
    content hash (:func:`with_content_hash`) checked: a file that fails it is an :class:`FDAlignError`
    naming it, with ``fix`` as the advice; one without a hash is accepted unless ``require_hash``.
    """
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise FDAlignError(f"{what} {path} is not readable ({e.strerror or e})") from None
    status = content_hash_status(data)
    if status == "bad" or (status == "missing" and require_hash):
        why = "fails its content hash" if status == "bad" else "carries no content hash"
        raise FDAlignError(f"{what} {path} {why}: it was damaged or changed after fdalign wrote it; {fix}")
    try:
        tensors = load(data)
        meta = dict(_split_safetensors(data)[0].get("__metadata__") or {})
    except Exception as e:
        raise FDAlignError(f"{what} {path} is not a readable safetensors file ({e})") from None
    meta.pop(HASH_KEY, None)
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of the temporary names :func:`atomic_write_bytes` / :func:`atomic_directory` write."""
    return _TEMP_NAME.fullmatch(name) is not None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_stale_temps(directory: str | os.PathLike, folders: tuple[str, ...] = RUN_FOLDERS) -> list[Path]:
    """Delete the temp files and folders (:func:`is_temp_name`) that killed atomic writes left in ``directory``
    and its sub-folders ``folders`` (not deeper: fdalign writes nowhere else); anything else, a user's own
    ``.notes.tmp`` included, is left alone. Returns what was removed. Call it only while holding the
    directory's :func:`run_lock`: then no live writer owns them."""
    directory = Path(directory)
    gone = []
    for here in [directory, *(directory / f for f in folders)]:
        # a sub-folder with its own lock (a sweep's cell) is its owner's to clean
        if here.is_symlink() or not here.is_dir() or (here != directory and (here / LOCK_FILE).exists()):
            continue
        for p in sorted(here.iterdir()):
            if is_temp_name(p.name):
                _remove(p)
                gone.append(p)
    return gone


@contextlib.contextmanager
def target_lock(path: str | os.PathLike, what: str = "output") -> Iterator[Path]:
    """Hold a lock on the output ``path`` (``.<name>.lock`` beside it) for the block, after removing the
    ``.fdalign-tmp.<name>.*.tmp`` / ``.fdalign-old.<name>.*.tmp`` leftovers of killed :func:`atomic_directory`
    / :func:`atomic_write_bytes` calls for that name (35 MB per killed export). A second process gets
    :class:`RunLockedError`."""
    import filelock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path.parent / f".{path.name}.lock"), timeout=0, is_singleton=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise RunLockedError(
            f"{what} {path} is being written by another fdalign process; wait for it, or choose another path"
        ) from None
    try:
        name = glob.escape(path.name)
        for p in [*path.parent.glob(f"{TEMP_PREFIX}{name}.*.tmp"), *path.parent.glob(f"{OLD_PREFIX}{name}.*.tmp")]:
            if is_temp_name(p.name):
                _remove(p)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):  # unlinked while still held: no stray file beside the output
            Path(lock.lock_file).unlink()
        lock.release()


@contextlib.contextmanager
def shared_file_lock(path: str | os.PathLike, what: str, timeout: float = 60.0) -> Iterator[Path]:
    """Hold the OS lock ``path`` for a short read-modify-write that several processes share (a sweep's
    ``sweep.json``): unlike :func:`target_lock` a second process waits its turn; one that waits ``timeout``
    seconds gets :class:`RunLockedError` naming the lock file. The file is removed on release (no stray
    file left beside the output), so a lock taken on a name just unlinked is taken again on the new one."""
    import filelock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        lock = filelock.FileLock(str(path), timeout=max(0.0, deadline - time.monotonic()), is_singleton=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise RunLockedError(
                f"{what}: its lock {path} was held by another fdalign process for {timeout:.0f} s; if none runs, "
                "delete that file"
            ) from None
        if _is_current(lock, path):
            break
        lock.release()
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        lock.release()


def _is_current(lock, path: Path) -> bool:
    """Whether a held ``filelock`` lock is on the file now at ``path`` (not on one its holder just unlinked)."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    try:
        return fd is None or os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def entry_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the lock file ``path`` (an OS file lock: it dies with its process) for the block, waiting while
    another process holds it: one writer per cache entry, and a second asker reads what the first wrote.
    Without a usable lock file (a read-only cache) the block simply runs."""
    import filelock

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(path), is_singleton=False)
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


LOCK_FILE = ".fdalign.lock"
_held: dict[str, list] = {}  # resolved lock path -> [FileLock, depth]: the lock is re-entrant in one process


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike, what: str = "run directory") -> Iterator[Path]:
    """Hold ``<directory>/.fdalign.lock`` (an OS file lock: it dies with its process) for the block.

    The owner's host, pid and start time go to ``.fdalign.lock.json``, removed on release. A second
    process gets :class:`RunLockedError` naming the owner at once (no waiting). Finding the owner file of
    a process that died while holding the lock (its OS lock went with it), the lock is taken over and a
    warning says so. Re-entrant within one process. Stale temp files of killed writes are removed, and said
    (:func:`remove_stale_temps`).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FDAlignError(f"{what} {directory} is a file, not a folder; choose another path")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    if _secondary_rank():  # torchrun's other ranks work under rank 0's lock
        yield directory
        return
    lock_path = directory / LOCK_FILE
    key = str(lock_path.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield directory
        finally:
            _held[key][1] -= 1
        return
    owner_path = directory / (LOCK_FILE + ".json")
    lock = _acquire_current(lock_path)
    if lock is None:
        raise RunLockedError(
            f"{what} {directory} is in use by another fdalign process ({_describe_owner(owner_path)}); "
            "wait for it to finish, or choose another folder"
        )
    try:
        if owner_path.is_file():
            warnings.warn(f"{what} {directory}: {_takeover_words(owner_path)}", stacklevel=3)
        atomic_write_json(
            owner_path, {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        )
        gone = remove_stale_temps(directory)
        if gone:  # said, so that a user can see nothing of theirs went
            shown = ", ".join(str(p.relative_to(directory)) for p in gone[:5]) + (" ..." if len(gone) > 5 else "")
            warnings.warn(
                f"{what} {directory}: removed {len(gone)} temporary file(s) left by a killed fdalign write: {shown}",
                stacklevel=3,
            )
        _held[key] = [lock, 1]
        try:
            yield directory
        finally:
            del _held[key]
            with contextlib.suppress(FileNotFoundError):
                owner_path.unlink()
    finally:
        with contextlib.suppress(FileNotFoundError):  # unlinked while still held, then released
            lock_path.unlink()
        lock.release()
        if created:  # a command that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                directory.rmdir()


def _acquire_current(lock_path: Path):
    """The OS lock on the file now at ``lock_path``, or None when another process holds it.

    The holder unlinks the file as it releases it, so a lock taken on a file opened just before that
    unlink would lock a name no one else sees any more (a third process would create and lock a new
    one): such a lock is dropped and taken again on the current file."""
    import filelock

    for _ in range(5):
        lock = filelock.FileLock(str(lock_path), timeout=0, is_singleton=False)
        try:
            lock.acquire()
        except filelock.Timeout:
            return None
        if _is_current(lock, lock_path):
            return lock
        lock.release()
    return None


def _secondary_rank() -> bool:
    if os.environ.get("RANK", "0") != "0":
        return True
    torch = sys.modules.get("torch")  # a process that never imported torch has no process group
    if torch is None:
        return False
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def _takeover_words(owner_path: Path) -> str:
    """What taking over a lock whose owner file stayed behind means: a process on this host that is gone
    ended without releasing it; one on another host may still run (its OS lock need not reach this host)."""
    owner = _describe_owner(owner_path)
    try:
        o = json.loads(owner_path.read_text(encoding="utf-8"))
        host, pid = str(o["host"]), int(o["pid"])
    except Exception:
        return f"taking over a lock whose owner is unknown ({owner})"
    if host != socket.gethostname():
        return (
            f"taking over the lock of {owner}: fdalign cannot see processes on host {host}, and a file lock may "
            "not reach across hosts; if that process still runs, stop this one now, or the two write over each other"
        )
    if _pid_alive(pid):
        return f"taking over the lock of {owner}: that pid is alive but does not hold the lock (a reused pid)"
    return f"taking over the lock of a process that ended without releasing it ({owner})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, owned by someone else
    return True


def _describe_owner(owner_path: Path) -> str:
    try:
        o = json.loads(owner_path.read_text(encoding="utf-8"))
        return f"pid {o['pid']} on host {o['host']}, since {o['since']}"
    except Exception:
        return "owner unknown"
