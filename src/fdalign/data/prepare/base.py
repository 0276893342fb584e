"""What every data set's preparer shares: the plan it returns, the published counts, the registry.

A preparer only reads: it looks up members of the ``--from`` sources and returns a :class:`Plan`
(which member goes where, the small files fdalign writes itself, the images per split and class).
Counts and split-file entries are checked on the plan, before a single file is written;
:mod:`fdalign.data.prepare.place` then writes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fdalign.data.prepare.paths import split_rel
from fdalign.data.prepare.sources import Member, Sources
from fdalign.errors import FDAlignError


@dataclass
class Options:
    split_file: Path | None = None


@dataclass
class Plan:
    """Everything one prepare writes, decided before writing."""

    files: list[tuple[Member, str]] = field(default_factory=list)  # (source member, path in the folder)
    extra: dict[str, bytes] = field(default_factory=dict)  # files fdalign writes (split file, class names, CSVs)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> class -> images
    missing: dict[str, list[str]] = field(default_factory=dict)  # split -> listed images not found
    notes: list[str] = field(default_factory=list)  # said to the user and kept in prepared.json
    split_file: str | None = None  # its path in the folder, when the layout is images + a split file
    split_sha256: str | None = None
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (copy used, copy not used)
    _at: dict[str, int] = field(default_factory=dict, repr=False)  # dest -> index in files

    def put(self, member: Member, dest: str) -> bool:
        """Plan ``member`` at ``dest`` (validated by :func:`paths.split_rel`); False when an image of
        that name is already planned: the same file reached twice (an extracted folder beside its
        archive, or a folder and its parent). A file on disk (linkable) is preferred to an archive's
        member; either way the copy used and the one not used are recorded."""
        split_rel(dest, what=f"{where(member)} (placed as {dest!r})")
        i = self._at.get(dest)
        if i is None:
            self._at[dest] = len(self.files)
            self.files.append((member, dest))
            return True
        old = self.files[i][0]
        if old.path is None and member.path is not None:
            self.files[i] = (member, dest)
            old, member = member, old
        self.duplicates.append((where(old), where(member)))
        return False

    def pick(self, found: dict, key: str, member: Member) -> None:
        """``found[key] = member`` unless ``key`` is found already: then the copy on disk is kept and
        the one not used recorded (see :meth:`put`)."""
        old = found.get(key)
        if old is None:
            found[key] = member
            return
        if old.path is None and member.path is not None:
            found[key], old, member = member, member, old
        self.duplicates.append((where(old), where(member)))

    def add(self, member: Member, dest: str, split: str, cls: str) -> None:
        if self.put(member, dest):
            self.count(split, cls)

    def count(self, split: str, cls: str) -> None:
        per = self.counts.setdefault(split, {})
        per[cls] = per.get(cls, 0) + 1


def where(m: Member) -> str:
    """A member as a user finds it: its file, or ``<archive>/<name inside>``."""
    return m.path if m.path is not None else f"{m.archive.label}/{m.inner}"


@dataclass(frozen=True)
class Download:
    """A file at a stable public URL and its checksum (``md5:...`` or ``sha256:...``)."""

    url: str
    known_hash: str
    filename: str


@dataclass(frozen=True)
class Preparer:
    """One data set: where it goes under ``--out``, what it needs, what it must hold.

    ``expected`` maps a split to its published (images, classes); ``reads`` is the path a shipped
    preset reads, relative to ``--data-root``.
    """

    name: str
    title: str
    folder: str
    needs: str  # the files to pass with --from, and where to get them
    disk_gb: float  # the size of the prepared copy (links take almost none)
    expected: dict[str, tuple[int | None, int]]  # images None: not published, classes only
    plan: Callable[[Sources, Options], Plan]
    reads: str
    downloads: tuple[Download, ...] = ()
    split_help: str | None = None  # where the split file comes from, for sets that need one
    data_dir: str = ""  # the sub-folder the presets read (CUB: images), where data check looks for prepared.json
    split_file: str | None = None  # CoOp's split_zhou_<Name>.json, for the sets that need one
    split_drive_id: str | None = None  # its id on CoOp's Google Drive (fetched with gdown by --download)
    layout: str = ""  # the member names it looks for, said when the counts are wrong
    signature: str = ""  # a pattern only its files match (recognises them when given to another preparer)
    looks: str = ""  # how a user would recognise it, said when its files are given to another preparer


REGISTRY: dict[str, Preparer] = {}


def register(p: Preparer) -> Preparer:
    REGISTRY[p.name] = p
    return p


def first(items: list[str], n: int = 5) -> str:
    """``a, b, c, d, e (and 12 more)``."""
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_counts(p: Preparer, plan: Plan, expected: dict[str, tuple[int, int]], against: str) -> None:
    """Raise naming the split, the numbers and the missing images when the plan's counts differ
    (and what was dropped while listing, which may be why)."""
    said = "".join(f"; {n}" for n in plan.notes if n.startswith("ignored "))
    for split, (want_n, want_c) in expected.items():
        per = plan.counts.get(split, {})
        n, c = sum(per.values()), sum(1 for v in per.values() if v)
        if (n if want_n is None else want_n, c) == (n, want_c):
            continue
        if want_n is None:  # no published image count: the classes alone
            raise FDAlignError(
                f"{p.title} {split}: {n} images in {c} classes, but {against} has {want_c} classes{said}; "
                f"nothing was written: give the complete files ({p.needs})"
            )
        gap = want_n - n
        what = f"{gap} missing" if gap > 0 else f"{-gap} more than expected"
        miss = plan.missing.get(split, [])
        named = f"; not found: {first(miss)}" if miss else ""
        raise FDAlignError(
            f"{p.title} {split}: {n} images in {c} classes, but {against} has {want_n} in {want_c} ({what}){named}{said}; "
            f"nothing was written: give the complete files ({p.needs})"
        )


def read_expect_counts(path: str | Path) -> dict[str, tuple[int, int]]:
    """``--expect-counts FILE``: ``{"split": [images, classes], ...}`` replacing the published numbers
    (for a subset or a miniature copy; prepared.json records that the published check was replaced)."""
    from fdalign.io import read_json

    d = read_json(path, "expected-counts file")
    ok = (
        isinstance(d, dict)
        and d
        and all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v) for v in d.values())
    )
    if not ok:
        raise FDAlignError(
            f'expected-counts file {path} must map each split to [images, classes], e.g. {{"test": [3669, 37]}}'
        )
    return {k: (v[0], v[1]) for k, v in d.items()}


__all__ = [
    "Options",
    "Plan",
    "Download",
    "Preparer",
    "REGISTRY",
    "register",
    "check_counts",
    "read_expect_counts",
    "first",
    "where",
]
