"""Writing a plan: a hidden staging folder filled file by file, renamed into place when complete.

``OUT/.<folder>.partial/`` receives every file (each link or copy made under a temporary name and
renamed, so a file that exists is complete); an interrupted prepare leaves it, and the same command
continues from what is there. ``prepared.json`` is written last, and the staging folder then
becomes ``OUT/<folder>`` in one rename: a folder named like a data set is always a complete one.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
from pathlib import Path

from fdalign.data.prepare.base import Plan, Preparer
from fdalign.data.prepare.sources import Member, Sources, copy_member
from fdalign.errors import FDAlignError
from fdalign.io import atomic_write_bytes, atomic_write_json, read_json

MANIFEST = "prepared.json"
FORMAT = "fdalign-prepared/1"
LINK_MODES = ("hard", "symbolic", "copy")


def _existing_parent(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def _links(m: Member, mode: str, device: int) -> bool:
    """Whether ``m`` will be linked (costing no space) rather than copied."""
    if m.path is None or mode == "copy":
        return False
    return mode == "symbolic" or os.stat(m.path).st_dev == device


def check_space(plan: Plan, out: Path, mode: str) -> int:
    """Bytes the copies need; an error before anything is written when the disk has less free."""
    base = _existing_parent(out)
    device = os.stat(base).st_dev
    need = sum(m.size for m, _ in plan.files if not _links(m, mode, device))
    need += sum(len(b) for b in plan.extra.values())
    free = shutil.disk_usage(base).free
    if need > free:
        raise FDAlignError(
            f"{out} needs {need / 1e9:.2f} GB for the copied files but {base} has {free / 1e9:.2f} GB "
            "free; free some space, choose another --out, or --link hard/symbolic from an extracted folder "
            "on the same disk"
        )
    return need


def _place(sources: Sources, m: Member, dest: Path, mode: str) -> str:
    """Put one file at ``dest`` atomically; return how (``hard`` / ``symbolic`` / ``copy``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if os.path.lexists(tmp):
        tmp.unlink()
    how = "copy"
    if m.path is not None and mode == "hard":
        try:
            os.link(m.path, tmp)
            how = "hard"
        except OSError:  # another file system, or links not allowed: copy instead
            how = "copy"
    elif m.path is not None and mode == "symbolic":
        os.symlink(os.path.abspath(m.path), tmp)
        how = "symbolic"
    if how == "copy":
        try:
            with open(tmp, "wb") as fh:
                copy_member(sources, m, fh)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dest)
    return how


def _done(dest: Path, m: Member) -> bool:
    return dest.is_symlink() or (dest.is_file() and dest.stat().st_size == m.size)


def manifest(p: Preparer, plan: Plan, sources: Sources, expected: dict, against: str, modes: dict) -> dict:
    from fdalign import __version__

    return {
        "format": FORMAT,
        "dataset": p.name,
        "title": p.title,
        "fdalign_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sources": sources.fingerprint(),
        "split_file": plan.split_file,
        "split_file_sha256": plan.split_sha256,
        "counts": {
            s: {
                "images": sum(v.values()),
                "classes": sum(1 for n in v.values() if n),
                "per_class": dict(sorted(v.items())),
            }
            for s, v in plan.counts.items()
        },
        "expected": {s: {"images": n, "classes": c} for s, (n, c) in expected.items()},
        "expected_from": against,
        "files": len(plan.files) + len(plan.extra),
        "placed": modes,
        "notes": plan.notes,
        "reads": p.reads,
        "data_dir": p.data_dir,
    }


def write(
    p: Preparer,
    plan: Plan,
    sources: Sources,
    out: Path,
    mode: str,
    expected: dict,
    against: str,
    progress: bool = False,
) -> Path:
    """Write ``plan`` into ``out/<folder>`` (continuing a staging folder left by an interruption); one
    process at a time per folder (a lock file beside it)."""
    from filelock import FileLock, Timeout

    final = out / p.folder
    if final.exists():
        raise FDAlignError(
            f"{final} exists but holds no {MANIFEST} (it was not written by fdalign data prepare); "
            "move it away or choose another --out"
        )
    check_space(plan, out, mode)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / f".{p.folder}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FDAlignError(
            f"another `fdalign data prepare` is writing {final} (lock {lock.lock_file}); wait for it "
            "to finish, then run this command again"
        ) from None
    try:
        return _write_locked(p, plan, sources, out, mode, expected, against, progress)
    finally:
        lock.release()


def _write_locked(
    p: Preparer, plan: Plan, sources: Sources, out: Path, mode: str, expected: dict, against: str, progress: bool
) -> Path:
    from tqdm.auto import tqdm

    final = out / p.folder
    if (final / MANIFEST).is_file():  # the other process finished it while we waited for nothing
        return final
    stage = out / f".{p.folder}.partial"
    stage.mkdir(parents=True, exist_ok=True)
    modes = {"hard": 0, "symbolic": 0, "copy": 0, "kept": 0}
    order = sorted(plan.files, key=lambda f: f[0].seq)  # archive order: one forward pass through each archive
    for m, rel in tqdm(order, desc=f"preparing {p.name}", unit="file", disable=None if progress else True):
        dest = stage / rel
        if _done(dest, m):
            modes["kept"] += 1
            continue
        modes[_place(sources, m, dest, mode)] += 1
    for rel, data in plan.extra.items():
        atomic_write_bytes(stage / rel, data)
    atomic_write_json(stage / MANIFEST, manifest(p, plan, sources, expected, against, modes))
    os.replace(stage, final)
    return final


def already_prepared(p: Preparer, out: Path) -> dict | None:
    """The manifest of a finished prepare of ``p`` under ``out``, or None."""
    m = out / p.folder / MANIFEST
    if not m.is_file():
        return None
    d = read_json(m, "prepare manifest")
    if not isinstance(d, dict) or d.get("dataset") != p.name:
        raise FDAlignError(f"{m} is not the manifest of a prepared {p.title}; choose another --out")
    return d


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


__all__ = ["write", "check_space", "already_prepared", "manifest", "MANIFEST", "LINK_MODES", "sha256_bytes"]
