"""Every path prepare writes, built from names it does not trust.

Archive members, annotation lines (ImageNet's ``LOC_val_solution.csv``, the Cars devkit, Aircraft's
variant lists) and class folder names come from files a mirror may have changed. Every preparer
builds its output paths with :func:`join` (each part validated on its own: no separator, not ``.``
or ``..``, no NUL or control character, at most :data:`MAX_PART_BYTES` bytes), and
:mod:`.place` opens nothing for writing before :func:`inside` has checked, directory by directory,
that the path lies inside the staging folder and crosses no symbolic link.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from pathlib import Path

from fdalign.errors import FDAlignError

MAX_PART_BYTES = 255  # NAME_MAX of ext4, xfs, btrfs, APFS and NTFS (in UTF-16 units there)
MAX_PATH_BYTES = 1024  # well under PATH_MAX (4096) once --out is prepended


class UnsafeName(FDAlignError):
    """A name from an archive or an annotation file that cannot be a file name under --out."""


def problem(part: str) -> str | None:
    """Why ``part`` cannot be one component of an output path, or None when it can."""
    if not isinstance(part, str) or part == "":
        return "an empty name"
    if part in (".", ".."):
        return f"the name {part!r} (a step out of its folder)"
    if "/" in part or "\\" in part:
        return "a path separator"
    # Cc: NUL and the control characters; Zl / Zp: line breaks that would split a listing line
    if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in part):
        return "a control character"
    try:
        size = len(part.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: bytes that were not UTF-8 in the archive
        return "bytes that are not UTF-8"
    if size > MAX_PART_BYTES:
        return f"{size} bytes (at most {MAX_PART_BYTES})"
    return None


def check_part(part: str, what: str) -> str:
    why = problem(part)
    if why is not None:
        raise UnsafeName(
            f"{what}: {ascii(part)[:120]} cannot be a file or folder name under --out ({why}); "
            "nothing was written: this file was changed or is not the official one, download it again"
        )
    return part


def join(*parts: str, what: str = "a name from the --from files") -> str:
    """``a/b/c`` from validated parts; a part holding a ``/`` is refused (split nested names first)."""
    for p in parts:
        check_part(p, what)
    rel = "/".join(parts)
    if not parts or len(rel.encode("utf-8")) > MAX_PATH_BYTES:
        raise UnsafeName(f"{what}: {ascii(rel)[:120]}... is too long a path (at most {MAX_PATH_BYTES} bytes)")
    return rel


def split_rel(rel: str, what: str = "a name from the --from files") -> list[str]:
    """The validated parts of a relative POSIX path (``b/bakery/shop/sun_1.jpg``)."""
    parts = rel.split("/")
    join(*parts, what=what)
    return parts


def inside(stage: Path, rel: str, mkdir: bool = True, seen: set | None = None) -> Path:
    """``stage/rel``, its folders made one by one; raises unless every folder on the way is a real
    folder inside ``stage`` (a symbolic link planted there, even to a folder inside, is refused) and the
    file itself is not a folder. Call before opening anything for writing. ``seen``: folders already
    checked in this run (ImageNet's 1.3 million files share 2,000 folders); the final check of the
    resolved parent still runs for every file."""
    parts = split_rel(rel, what=f"the output path {rel!r}")
    base = stage.resolve(strict=True)
    here = base
    for part in parts[:-1]:
        here = here / part
        if seen is not None and here in seen:
            continue
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            if not mkdir:
                return base.joinpath(*parts)
            os.mkdir(here)
            st = os.lstat(here)
        if not stat.S_ISDIR(st.st_mode):
            raise _planted(stage, here, "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file")
        if seen is not None:
            seen.add(here)
    dest = here / parts[-1]
    if os.path.isdir(dest) and not os.path.islink(dest):
        raise _planted(stage, dest, "a folder")
    # the walk above is the guarantee; this re-check costs one realpath and catches a race
    if os.path.commonpath([base, os.path.realpath(dest.parent)]) != str(base):
        raise _planted(stage, dest.parent, "a symbolic link")
    return dest


def _planted(stage: Path, where: Path, what: str) -> FDAlignError:
    return FDAlignError(
        f"{where} is {what} in the staging folder where prepare writes a "
        f"{'file' if what == 'a folder' else 'folder'}; it was not put there by fdalign: remove {stage} and run "
        "the same command again"
    )


__all__ = ["UnsafeName", "problem", "check_part", "join", "split_rel", "inside", "MAX_PART_BYTES"]
