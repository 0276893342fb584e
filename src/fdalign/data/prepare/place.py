"""Writing a plan: a hidden staging folder filled file by file, renamed into place when complete.

``OUT/.<folder>.partial/`` receives every file (each link or copy made under a temporary name and
renamed, so a file that exists is complete); an interrupted prepare leaves it, and the same command
continues from what is there. ``prepared.json`` is written last, and the staging folder then
becomes ``OUT/<folder>`` in one rename: a folder named like a data set is always a complete one.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import os
import shutil
import stat
from pathlib import Path

from fdalign.data.prepare.base import Plan, Preparer, first
from fdalign.data.prepare.sources import DROP_REASONS, Member, Sources, copy_member
from fdalign.errors import FDAlignError
from fdalign.io import atomic_write_bytes, atomic_write_json, file_sha256, read_json

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


def _staged_size(dest: Path) -> int | None:
    try:
        st = os.lstat(dest)
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def check_space(plan: Plan, out: Path, mode: str, stage: Path | None = None) -> int:
    """Bytes still to be copied; an error before anything is written when the disk has less free.
    A file already staged at its size is not counted again (a rerun after freeing space fits); one
    that is then found to differ is rewritten in place of bytes of the same size."""
    base = _existing_parent(out)
    device = os.stat(base).st_dev
    need = 0
    for m, rel in plan.files:
        if _links(m, mode, device) or (stage is not None and _staged_size(stage / rel) == m.size):
            continue
        need += m.size
    need += sum(len(b) for b in plan.extra.values())
    free = shutil.disk_usage(base).free
    if need > free:
        raise FDAlignError(
            f"{out} needs {need / 1e9:.2f} GB for the files still to be copied but {base} has {free / 1e9:.2f} GB "
            "free; free some space, choose another --out, or --link hard/symbolic from an extracted folder "
            "on the same disk"
        )
    return need


_TMP = ".fdalign-tmp-"  # a file being placed; left by an interruption, it is removed, not reused


def _place(sources: Sources, m: Member, dest: Path, mode: str) -> str:
    """Put one file at ``dest`` (already checked by :func:`paths.inside`) atomically; return how
    (``hard`` / ``symbolic`` / ``copy``). The temporary name is short and created exclusively, so a
    long member name or a link planted at the temporary name cannot redirect the write."""
    tmp = dest.parent / f"{_TMP}{os.getpid()}-{next(_COUNTER)}"
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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
            with os.fdopen(fd, "wb") as fh:
                copy_member(sources, m, fh)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dest)
    return how


_COUNTER = itertools.count()


def _reusable(sources: Sources, m: Member, dest: Path, mode: str) -> str | None:
    """How a file staged by an interrupted prepare was placed, when it may be kept: a link to this
    very source file, or a copy whose SHA-256 is the source member's (a size match is not enough: a
    rerun with another archive must not keep the first one's bytes). None: place it again."""
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        ok = mode == "symbolic" and m.path is not None and os.readlink(dest) == os.path.abspath(m.path)
        return "symbolic" if ok else None
    if not stat.S_ISREG(st.st_mode) or st.st_size != m.size:
        return None
    same_inode = m.path is not None and os.path.samefile(dest, m.path)
    if same_inode:
        return "hard" if mode == "hard" else None  # --link copy wants a file of its own
    if m.path is not None and (mode == "symbolic" or (mode == "hard" and os.stat(m.path).st_dev == st.st_dev)):
        return None  # it should be a link; a copy in its place is replaced by the link
    return "copy" if file_sha256(dest) == sources.sha256(m) else None


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
        "dropped": {
            why: {"what": DROP_REASONS[why], "count": len(names), "names": names[:50]}
            for why, names in sorted(sources.dropped().items())
        },
        "duplicates": {"count": len(plan.duplicates), "used_not_used": [list(d) for d in plan.duplicates[:20]]},
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
    process at a time per folder (a lock file beside it, removed when done)."""
    from filelock import FileLock, Timeout

    final = out / p.folder
    if final.exists():
        raise FDAlignError(
            f"{final} exists but holds no {MANIFEST} (it was not written by fdalign data prepare); "
            "move it away or choose another --out"
        )
    stage = out / f".{p.folder}.partial"
    check_space(plan, out, mode, stage if _real_folder(stage) else None)
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
        # removed while still held: a process that opened it before sees the lock taken, one after
        # creates a new file; either way no lock file is left beside the data
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()


def _real_folder(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _open_stage(out: Path, folder: str) -> Path:
    stage = out / f".{folder}.partial"
    if os.path.lexists(stage) and not _real_folder(stage):
        raise FDAlignError(
            f"{stage} (prepare's staging folder) is a symbolic link or a file, not put there by fdalign; "
            "remove it and run the same command again"
        )
    stage.mkdir(exist_ok=True)
    return stage


def _sweep_foreign(stage: Path, planned: set[str]) -> list[str]:
    """Remove what this prepare would not write from the staging folder, before writing; return
    those names. A staged file at a planned path is kept for :func:`_reusable` to judge; anything
    else (other files, links, folders, at any depth) was not written by this prepare."""
    dirs = {"/".join(r.split("/")[:i]) for r in planned for i in range(1, r.count("/") + 1)}
    foreign = []
    for root, subdirs, files in os.walk(stage, followlinks=False):
        base = Path(root).relative_to(stage).as_posix()
        for name in sorted(subdirs + files):
            rel = name if base == "." else f"{base}/{name}"
            full = Path(root) / name
            if rel in dirs and _real_folder(full):
                continue
            if rel in planned and not _real_folder(full):
                continue
            if not name.startswith(_TMP):
                foreign.append(rel)
            if _real_folder(full):
                shutil.rmtree(full)
            else:
                full.unlink()
        subdirs[:] = [d for d in subdirs if (Path(root) / d).is_dir() and not os.path.islink(Path(root) / d)]
    return foreign


def _write_locked(
    p: Preparer, plan: Plan, sources: Sources, out: Path, mode: str, expected: dict, against: str, progress: bool
) -> Path:
    from tqdm.auto import tqdm

    from fdalign.data.prepare.paths import inside

    final = out / p.folder
    if (final / MANIFEST).is_file():  # the other process finished it while we waited for nothing
        return final
    stage = _open_stage(out, p.folder)
    foreign = _sweep_foreign(stage, {rel for _, rel in plan.files} | set(plan.extra) | {MANIFEST})
    if foreign:
        plan.notes.append(
            f"{len(foreign)} files or folders in {stage} were not written by this prepare and were left out "
            f"(removed): {first(foreign)}"
        )
    modes = {"hard": 0, "symbolic": 0, "copy": 0, "kept": 0}
    kept = {"hard": 0, "symbolic": 0, "copy": 0}
    order = sorted(plan.files, key=lambda f: f[0].seq)  # archive order: one forward pass through each archive
    seen: set = set()  # folders checked once by inside()
    for m, rel in tqdm(order, desc=f"preparing {p.name}", unit="file", disable=None if progress else True):
        dest = inside(stage, rel, seen=seen)
        how = _reusable(sources, m, dest, mode)
        if how is not None:
            modes["kept"] += 1
            kept[how] += 1
            continue
        modes[_place(sources, m, dest, mode)] += 1
    for rel, data in plan.extra.items():
        atomic_write_bytes(inside(stage, rel), data)
    man = manifest(p, plan, sources, expected, against, modes)
    man["kept_as"] = kept  # how the files kept from an interrupted prepare had been placed
    man["left_out_of_staging"] = foreign
    atomic_write_json(inside(stage, MANIFEST), man)
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
