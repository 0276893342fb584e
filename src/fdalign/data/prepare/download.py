"""``--download``: the official files fetched with pooch, resumed after an interruption, checksum-verified.

pooch checks the hash and moves a file into place only when it matches; its HTTP downloader
starts over after an interruption, which for SUN397's 37 GB is not acceptable, so the downloader
given to it keeps the bytes received in ``<file>.part`` and asks the server for the rest
(an HTTP Range request). A server that ignores the range sends the whole file, which replaces the
part. A file whose hash does not match is discarded, part included, and the error says so.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fdalign.data.prepare.base import Download
from fdalign.errors import FDAlignError


class ResumingDownloader:
    """A pooch downloader continuing ``part`` (bytes already received) with an HTTP Range request."""

    def __init__(self, part: Path, progress: bool = False, timeout: float = 60.0):
        self.part, self.progress, self.timeout = part, progress, timeout

    def __call__(self, url: str, output_file, pooch) -> None:
        import requests
        from tqdm.auto import tqdm

        have = self.part.stat().st_size if self.part.is_file() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=self.timeout) as r:
            if r.status_code == 416:  # the part is already the whole file
                pass
            else:
                r.raise_for_status()
                mode = "ab" if have and r.status_code == 206 else "wb"
                total = int(r.headers.get("content-length", 0)) or None
                with (
                    open(self.part, mode) as fh,
                    tqdm(
                        total=total,
                        unit="B",
                        unit_scale=True,
                        desc=self.part.name,
                        disable=None if self.progress else True,
                    ) as bar,
                ):
                    for chunk in r.iter_content(1 << 20):
                        fh.write(chunk)
                        bar.update(len(chunk))
        os.replace(self.part, output_file)  # pooch hashes it, then keeps or deletes it


MIRROR_ENV = "FDALIGN_MIRROR"
DRIVE_URL = "https://drive.google.com/uc?id={id}"  # what gdown fetches a shared Drive file by


def mirrored(d: Download, mirror: str | None) -> str:
    """The URL of ``d``: on a mirror, the file by its name under the mirror's URL (its checksum still
    checked); otherwise the publisher's."""
    return f"{mirror.rstrip('/')}/{d.filename}" if mirror else d.url


def fetch(
    downloads: tuple[Download, ...], folder: str | os.PathLike, progress: bool = False, mirror: str | None = None
) -> list[Path]:
    """Download each file into ``folder`` (a complete file with the right hash is kept as it is)."""
    import pooch
    import requests

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    got = []
    for d in downloads:
        part = folder / f"{d.filename}.part"
        url = mirrored(d, mirror)
        try:
            got.append(
                Path(
                    pooch.retrieve(
                        url,
                        d.known_hash,
                        fname=d.filename,
                        path=folder,
                        downloader=ResumingDownloader(part, progress),
                    )
                )
            )
        except ValueError as e:
            part.unlink(missing_ok=True)
            got_hash = re.search(r"expected (\S+) but got (\w+)", str(e))
            said = f"expected {got_hash.group(1)}, got {got_hash.group(2)}" if got_hash else " ".join(str(e).split())
            raise FDAlignError(
                f"{url}: the download's checksum does not match ({said}); it was discarded: run again, "
                f"or download it by hand into {folder} and pass it with --from"
            ) from None
        except requests.RequestException as e:
            kept = part.stat().st_size if part.is_file() else 0
            where = (
                f"the {kept:,} bytes received are kept in {part} and the same command continues them"
                if kept
                else "nothing was received"
            )
            raise FDAlignError(
                f"cannot download {url} ({type(e).__name__}: {e}); {where}; or download it by hand and pass it with --from"
            ) from None
    return got


def fetch_split(
    filename: str, drive_id: str, folder: str | os.PathLike, progress: bool = False, mirror: str | None = None
) -> Path:
    """CoOp's ``split_zhou_<Name>.json`` from CoOp's Google Drive by its known id (with gdown), or from
    ``mirror``/<filename>. No checksum is published for it: it must be a CoOp split (JSON with train /
    val / test lists), which prepare checks entry by entry against the images, and its SHA-256 goes
    into prepared.json. A file already there is used as it is."""
    import gdown

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / filename
    if out.is_file():
        return out
    url = f"{mirror.rstrip('/')}/{filename}" if mirror else DRIVE_URL.format(id=drive_id)
    part = folder / f"{filename}.part"
    by_hand = f"download it by hand from https://drive.google.com/file/d/{drive_id}/view and pass --split-file"
    try:
        done = gdown.download(url=url, output=str(part), quiet=not progress, use_cookies=False, timeout=60)
    except Exception as e:  # gdown raises its own errors, requests' and OSError
        part.unlink(missing_ok=True)
        raise FDAlignError(f"cannot download {filename} from {url} ({type(e).__name__}: {e}); {by_hand}") from None
    if not done or not part.is_file():
        raise FDAlignError(f"cannot download {filename} from {url} (nothing was received); {by_hand}")
    import json

    try:
        d = json.loads(part.read_bytes())
        ok = isinstance(d, dict) and all(isinstance(d.get(k), list) for k in ("train", "val", "test"))
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        part.unlink()
        raise FDAlignError(
            f"{url} did not send a CoOp split file (JSON with train / val / test lists; Drive may have sent a "
            f"page instead); {by_hand}"
        )
    os.replace(part, out)
    return out


__all__ = ["fetch", "fetch_split", "mirrored", "ResumingDownloader", "MIRROR_ENV", "DRIVE_URL"]
