"""``--download``: the official files fetched with pooch, resumed after an interruption, checksum-verified.

pooch checks the hash and moves a file into place only when it matches; its HTTP downloader
starts over after an interruption, which for SUN397's 37 GB is not acceptable, so the downloader
given to it keeps the bytes received in ``<file>.part`` and asks the server for the rest
(an HTTP Range request). A server that ignores the range sends the whole file, which replaces the
part. A file whose hash does not match is discarded, part included, and the error says so.
"""

from __future__ import annotations

import os
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


def fetch(downloads: tuple[Download, ...], folder: str | os.PathLike, progress: bool = False) -> list[Path]:
    """Download each file into ``folder`` (a complete file with the right hash is kept as it is)."""
    import pooch
    import requests

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    got = []
    for d in downloads:
        part = folder / f"{d.filename}.part"
        try:
            got.append(
                Path(
                    pooch.retrieve(
                        d.url,
                        d.known_hash,
                        fname=d.filename,
                        path=folder,
                        downloader=ResumingDownloader(part, progress),
                    )
                )
            )
        except ValueError as e:
            part.unlink(missing_ok=True)
            raise FDAlignError(
                f"{d.url}: the download's checksum does not match ({d.known_hash}); it was discarded "
                f"({' '.join(str(e).split())[:200]}): run again, or download it by hand into {folder} "
                "and pass it with --from"
            ) from None
        except requests.RequestException as e:
            raise FDAlignError(
                f"cannot download {d.url} ({type(e).__name__}: {e}); the bytes received are kept in "
                f"{part} and the same command continues them; or download it by hand and pass it "
                "with --from"
            ) from None
    return got


__all__ = ["fetch", "ResumingDownloader"]
