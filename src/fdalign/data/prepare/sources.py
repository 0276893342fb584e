"""What ``--from`` points at: folders and tar / zip archives, read member by member.

A :class:`Source` lists every file below one ``--from`` path under a POSIX name relative to it.
Archives inside an archive or a folder (ImageNet's train tar holds one tar per class; Caltech101's
zip holds a tar.gz) are opened in place and their members listed as ``<inner archive>/<name>``,
so ``n01440764.tar/n01440764_10026.JPEG`` and an extracted ``n01440764/n01440764_10026.JPEG``
are found by the same pattern. Nothing is extracted to a temporary place.

Damaged archives are found while listing, before anything is written: a zip cut short has no
central directory, a gzip cut short fails to decompress, tarfile checks that a plain tar
reaches the end of every member it lists (tested with a tar cut inside its last image), and a
plain tar whose listing stops on bytes that are not its end-of-archive zeros was cut inside a
header.

Sources are untrusted. A folder's files are listed as ``<folder name>/<path>`` (so the folder an
archive extracts to is found by the same patterns as the archive) without following symbolic
links unless asked. Members that are links, devices or pipes, whose names step out of their folder
or cannot be file names (:func:`fdalign.data.prepare.paths.problem`), and the metadata files of
macOS and Windows (``__MACOSX/``, ``._*``, ``.DS_Store``, ``Thumbs.db``) are dropped while listing,
counted per reason (:attr:`Source.dropped`), and said.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
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
SYSTEM_FILES = (".DS_Store", "Thumbs.db", "desktop.ini")
DROP_REASONS = {
    "system": "macOS / Windows metadata (__MACOSX/, ._*, .DS_Store, Thumbs.db)",
    "link": "symbolic or hard links",
    "special": "devices, pipes and sockets",
    "unsafe": "names that step out of their folder or cannot be file names",
}


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def drop_reason(name: str) -> str | None:
    """Why a member named ``name`` (POSIX, relative) is not data: ``system`` / ``unsafe`` / None."""
    from fdalign.data.prepare.paths import problem

    if name.startswith("/"):
        return "unsafe"
    parts = name.split("/")
    if any(problem(p) for p in parts):
        return "unsafe"
    if "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] in SYSTEM_FILES:
        return "system"
    return None


def _clean(name: str) -> str:
    """A tar's ``./a/b`` is ``a/b``; nothing else is rewritten (``../`` stays, to be dropped)."""
    while name.startswith("./"):
        name = name[2:]
    return name


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
        self.not_files: list[tuple[str, str]] = []  # (name, "link" / "special"), said as dropped
        self._listed = False
        self._load(fileobj)

    def _load(self, fileobj: BinaryIO | None = None) -> None:
        try:
            if self.label.lower().endswith(".zip"):
                self._zip = zipfile.ZipFile(fileobj if fileobj is not None else self.path)
            else:
                self._tar = tarfile.open(name=self.path, fileobj=fileobj, mode="r:*")
                if not self._listed:
                    self._listed = True
                    # tarfile checks, for each member it lists, that the file reaches the member's end
                    for m in self._tar.getmembers():
                        if m.isfile():
                            self._tar_members[m.name] = m
                        elif not m.isdir():
                            self.not_files.append((m.name, "link" if m.issym() or m.islnk() else "special"))
                    self._check_tar_end()
        except _BROKEN as e:
            raise _broken(self.label, e) from None

    def _check_tar_end(self) -> None:
        """tarfile ends its listing quietly at a header cut short; a plain tar's end must be zeros."""
        fo = self._tar.fileobj
        if type(fo).__name__ in ("GzipFile", "BZ2File", "LZMAFile", "_Stream") or not fo.seekable():
            return  # a compressed stream cut short fails to decompress instead
        fo.seek(self._tar.offset)
        rest = fo.read(1 << 16)
        if rest.strip(b"\0") or not rest:
            raise tarfile.ReadError(
                f"the listing stops at byte {self._tar.offset} on {'a cut header' if rest else 'no end-of-archive block'}"
            )

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
                kind = stat.S_IFMT(i.external_attr >> 16)  # a zip made on Unix keeps the file type here
                if i.is_dir():
                    continue
                if kind and not stat.S_ISREG(kind):
                    self.not_files.append((i.filename, "link" if stat.S_ISLNK(kind) else "special"))
                    continue
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

    def __init__(self, path: str | os.PathLike, follow_symlinks: bool = False):
        self.path = Path(path)
        if not self.path.exists():
            raise FDAlignError(
                f"--from {self.path} does not exist; give the downloaded archive or its extracted folder"
            )
        self.follow = follow_symlinks
        self.members: dict[str, Member] = {}
        self.dropped: dict[str, list[str]] = {}  # reason -> names (see DROP_REASONS)
        if self.path.is_dir():
            self._walk()
        else:  # an archive is itself a member (the devkit is read whole) and lists its own members
            # a link named on the command line is the user's choice: read what it points to
            self._add(Member(self.path.name, self.path.stat().st_size, path=os.path.realpath(self.path)))

    def _walk(self) -> None:
        """List the folder as ``<its name>/<path>``: ``--from imagenet-a`` and ``--from`` its parent
        find the same ``imagenet-a/<wnid>/<file>`` names."""
        top = os.path.basename(os.path.abspath(self.path))
        seen = {os.path.realpath(self.path)}  # --follow-symlinks: a link back up is not a loop
        for root, dirs, files in os.walk(self.path, followlinks=self.follow):
            dirs.sort()
            for d in list(dirs):
                p = os.path.join(root, d)
                rel = Path(p).relative_to(self.path).as_posix()
                why = drop_reason(rel)
                if why is None and os.path.islink(p):
                    why = None if self.follow and os.path.realpath(p) not in seen else "link"
                if why is not None:
                    self._drop(why, f"{top}/{rel}/")
                    dirs.remove(d)
                else:
                    seen.add(os.path.realpath(p))
            for f in sorted(files):
                p = os.path.join(root, f)
                rel = Path(p).relative_to(self.path).as_posix()
                why = drop_reason(rel)
                st = os.stat(p) if self.follow and why is None and os.path.exists(p) else os.lstat(p)
                if why is None and stat.S_ISLNK(st.st_mode):
                    why = "link"
                elif why is None and not stat.S_ISREG(st.st_mode):
                    why = "special"
                if why is not None:
                    self._drop(why, f"{top}/{rel}")
                    continue
                self._add(Member(f"{top}/{rel}", st.st_size, path=os.path.realpath(p) if self.follow else p))

    def _drop(self, why: str, name: str) -> None:
        self.dropped.setdefault(why, []).append(name if why != "unsafe" else ascii(name)[1:-1])

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
            name = _clean(inner)
            why = drop_reason(name)
            if why is not None:
                self._drop(why, prefix + name)
                continue
            archive.nested = archive.nested or is_archive(name)
            self._add(Member(prefix + name, size, archive=archive, inner=inner))
        for inner, why in archive.not_files:
            self._drop(why, prefix + _clean(inner))
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

    def __init__(self, paths, follow_symlinks: bool = False):
        self.list = [Source(p, follow_symlinks) for p in paths]

    def dropped(self) -> dict[str, list[str]]:
        """Reason -> the members dropped while listing, over all sources."""
        out: dict[str, list[str]] = {}
        for s in self.list:
            for why, names in s.dropped.items():
                out.setdefault(why, []).extend(names)
        return out

    def sha256(self, m: Member) -> str:
        """The SHA-256 of a member's bytes (a staged file is reused only when its own matches)."""
        h = hashlib.sha256()

        class _Sink:
            write = staticmethod(h.update)

        copy_member(self, m, _Sink())
        return h.hexdigest()

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
            with _open_listed(m.path) as fh:
                return fh.read()
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


def _open_listed(path: str) -> BinaryIO:
    """A listed file, read without following a link put in its place since it was listed."""
    return os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")


def copy_member(sources: Sources, m: Member, fh: BinaryIO) -> None:
    """Stream a member's bytes into ``fh``."""
    import shutil

    if m.path is not None:
        with _open_listed(m.path) as src:
            shutil.copyfileobj(src, fh, 1 << 20)
        return
    try:
        with m.archive.open(m.inner) as src:
            shutil.copyfileobj(src, fh, 1 << 20)
    except _BROKEN as e:
        raise _broken(f"{m.archive.label} (member {m.inner})", e) from None


__all__ = ["Source", "Sources", "Member", "Archive", "copy_member", "is_archive", "drop_reason", "DROP_REASONS"]
