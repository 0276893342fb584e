"""What ``--from`` points at: folders and tar / zip archives, read member by member.

A :class:`Source` lists every file below one ``--from`` path under a POSIX name relative to it.
Archives inside an archive or a folder (ImageNet's train tar holds one tar per class; Caltech101's
zip holds a tar.gz) are opened in place and their members listed as ``<inner archive>/<name>``,
so ``n01440764.tar/n01440764_10026.JPEG`` and an extracted ``n01440764/n01440764_10026.JPEG``
are found by the same pattern. Nothing is extracted to a temporary place.

Damaged archives are found while listing, before anything is written: a zip cut short has no
central directory, a gzip cut short fails to decompress, and tarfile checks that a plain tar
reaches the end of every member it lists (tested with a tar cut inside its last image).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from fdalign.errors import FDAlignError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_BROKEN = (tarfile.TarError, EOFError, zlib.error, zipfile.BadZipFile, OSError)


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _broken(path: str, e: BaseException) -> FDAlignError:
    return FDAlignError(
        f"{path} cannot be read as a tar or zip archive ({type(e).__name__}: {e}); it is truncated or not "
        "the archive named in `fdalign data prepare --list`: download it again"
    )


@dataclass(frozen=True)
class Member:
    """One file of a source: where it lives and how big it is."""

    name: str  # POSIX, relative to the --from path
    size: int
    path: str | None = None  # a plain file on disk (linkable); None inside an archive
    archive: Archive | None = None
    inner: str | None = None  # its name inside ``archive``
    seq: int = 0  # position in listing order (archive order): files are placed in one forward pass


_REOPENED: list[Archive] = []  # the one released archive reopened for reading (see Archive.release)


class Archive:
    """A tar or zip archive, listed once; members are read in file order by :meth:`open`."""

    def __init__(self, label: str, fileobj: BinaryIO | None = None, path: str | None = None):
        self.label, self.path, self.nested = label, path, False
        self._zip = self._tar = None
        self._tar_members: dict = {}
        self._load(fileobj)

    def _load(self, fileobj: BinaryIO | None = None) -> None:
        try:
            if self.label.lower().endswith(".zip"):
                self._zip = zipfile.ZipFile(fileobj if fileobj is not None else self.path)
            else:
                self._tar = tarfile.open(name=self.path, fileobj=fileobj, mode="r:*")
                if not self._tar_members:
                    # tarfile checks, for each member it lists, that the file reaches the member's end
                    self._tar_members = {m.name.lstrip("./"): m for m in self._tar.getmembers() if m.isfile()}
        except _BROKEN as e:
            raise _broken(self.label, e) from None

    def release(self) -> None:
        """Close the file of a listed archive on disk; it is reopened when read. A folder of 1,000
        class tars (ImageNet's train tar, extracted one level) would otherwise hold 1,000 files open.
        Archives that hold archives stay open: those read through them."""
        if self.path is None or self.nested:
            return
        (self._zip or self._tar).close()
        self._zip = self._tar = None

    def _ensure_open(self) -> None:
        if self._zip is None and self._tar is None:
            while _REOPENED:  # files are placed archive by archive: one reopened at a time
                _REOPENED.pop().release()
            self._load()
            _REOPENED.append(self)

    def members(self) -> Iterator[tuple[str, int]]:
        if self._zip is not None:
            for i in self._zip.infolist():
                if not i.is_dir():
                    yield i.filename, i.file_size
        else:
            for name, m in self._tar_members.items():
                yield name, m.size

    def open(self, inner: str) -> BinaryIO:
        self._ensure_open()
        try:
            if self._zip is not None:
                return self._zip.open(inner)
            return self._tar.extractfile(self._tar_members[inner])
        except _BROKEN as e:
            raise _broken(self.label, e) from None

    def read(self, inner: str) -> bytes:
        try:
            with self.open(inner) as fh:
                return fh.read()
        except _BROKEN as e:
            raise _broken(f"{self.label} (member {inner})", e) from None


class Source:
    """Every file below one ``--from`` path (a folder, an archive, or a single file)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise FDAlignError(
                f"--from {self.path} does not exist; give the downloaded archive or its extracted folder"
            )
        self.members: dict[str, Member] = {}
        if self.path.is_dir():
            for root, dirs, files in os.walk(self.path, followlinks=False):
                dirs.sort()
                for f in sorted(files):
                    p = os.path.join(root, f)
                    rel = Path(p).relative_to(self.path).as_posix()
                    self._add(Member(rel, os.path.getsize(p), path=p))
        else:  # an archive is itself a member (the devkit is read whole) and lists its own members
            self._add(Member(self.path.name, self.path.stat().st_size, path=str(self.path)))

    def _add(self, m: Member) -> None:
        m = replace(m, seq=len(self.members))
        self.members[m.name] = m
        if is_archive(m.name):
            if m.path:
                archive = Archive(m.path, path=m.path)
            else:
                archive = Archive(f"{m.archive.label}/{m.inner}", fileobj=m.archive.open(m.inner))
            self._add_archive(archive, m.name + "/")

    def _add_archive(self, archive: Archive, prefix: str) -> None:
        for inner, size in archive.members():
            archive.nested = archive.nested or is_archive(inner)
            self._add(Member(prefix + inner, size, archive=archive, inner=inner))
        archive.release()

    def find(self, pattern: str) -> list[tuple[Member, re.Match]]:
        """Members whose name ends with a match of ``pattern`` (anchored at a ``/`` or the start)."""
        rx = re.compile(r"(?:^|/)" + pattern + r"$")
        out = []
        for name, m in self.members.items():
            hit = rx.search(name)
            if hit:
                out.append((m, hit))
        return out


class Sources:
    """All ``--from`` paths together: a pattern is looked for in each."""

    def __init__(self, paths):
        self.list = [Source(p) for p in paths]

    def find(self, pattern: str) -> list[tuple[Member, re.Match]]:
        return [hit for s in self.list for hit in s.find(pattern)]

    def one(self, pattern: str, what: str, fix: str) -> Member:
        """The single member matching ``pattern``; a missing one is an error naming ``what`` and ``fix``."""
        hits = self.find(pattern)
        if not hits:
            froms = ", ".join(str(s.path) for s in self.list)
            raise FDAlignError(f"{what} not found in {froms}; {fix}")
        return hits[0][0]

    def read(self, m: Member) -> bytes:
        if m.path is not None:
            return Path(m.path).read_bytes()
        return m.archive.read(m.inner)

    def fingerprint(self) -> list[dict]:
        """SHA-256 of every ``--from`` file; a folder gets the hash of its listing (names and sizes),
        since hashing every image of an extracted ImageNet would take as long as copying it."""
        out = []
        for s in self.list:
            if s.path.is_file():
                h = hashlib.sha256()
                with open(s.path, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        h.update(block)
                out.append({"path": str(s.path.resolve()), "sha256": h.hexdigest(), "bytes": s.path.stat().st_size})
            else:
                listing = "\n".join(f"{n}\t{m.size}" for n, m in sorted(s.members.items()))
                out.append(
                    {
                        "path": str(s.path.resolve()),
                        "listing_sha256": hashlib.sha256(listing.encode()).hexdigest(),
                        "files": len(s.members),
                    }
                )
        return out


def copy_member(sources: Sources, m: Member, fh: BinaryIO) -> None:
    """Stream a member's bytes into ``fh``."""
    import shutil

    if m.path is not None:
        with open(m.path, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
        return
    try:
        with m.archive.open(m.inner) as src:
            shutil.copyfileobj(src, fh, 1 << 20)
    except _BROKEN as e:
        raise _broken(f"{m.archive.label} (member {m.inner})", e) from None


__all__ = ["Source", "Sources", "Member", "Archive", "copy_member", "is_archive"]
