"""`fdalign data prepare --download` against a real HTTP server on 127.0.0.1 serving miniature archives:
a verified download, a checksum mismatch, and a partial download continued with an HTTP Range request."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

import _archives as A
from fdalign.cli import main


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring 'Range: bytes=N-' with 206 (the stdlib handler ignores ranges)."""

    log: list = []

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        rng = self.headers.get("Range")
        self.log.append((self.path, rng))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    RangeHandler.log = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(RangeHandler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", RangeHandler.log
    httpd.shutdown()
    httpd.server_close()


def md5(p: Path) -> str:
    return "md5:" + hashlib.md5(p.read_bytes()).hexdigest()


@pytest.fixture
def pets(server, tmp_path, monkeypatch):
    """The Pets miniature on the server, and the registry's Pets downloads pointed at it."""
    from fdalign.data.prepare import REGISTRY, Download, get

    root, url, log = server
    m = A.coop("oxford_pets", root)
    p = get("oxford_pets")

    def point(hashes=None):
        downloads = tuple(Download(f"{url}/{f.name}", (hashes or {}).get(f.name, md5(f)), f.name) for f in m["from"])
        monkeypatch.setitem(REGISTRY, "oxford_pets", dataclasses.replace(p, downloads=downloads))

    point()
    return m, point, log


def prepare(m, tmp_path) -> int:
    exp = A.expect(tmp_path / "expect.json", m["counts"])
    return main(
        [
            "data",
            "prepare",
            "oxford_pets",
            "--download",
            "--split-file",
            str(m["split"]),
            "--out",
            str(tmp_path / "data"),
            "--expect-counts",
            str(exp),
            "--no-progress",
        ]
    )


def test_download_verified_then_prepared(pets, tmp_path):
    m, _, log = pets
    assert prepare(m, tmp_path) == 0
    got = tmp_path / "data" / "downloads" / "images.tar.gz"
    assert got.read_bytes() == m["from"][0].read_bytes()
    assert (tmp_path / "data" / "oxford_pets" / "prepared.json").is_file()
    assert [r for r in log if r[1]] == []  # nothing to resume: plain GETs


def test_checksum_mismatch_discards_the_file(pets, tmp_path, capsys):
    m, point, _ = pets
    point({"images.tar.gz": "md5:" + "0" * 32})
    assert prepare(m, tmp_path) == 2
    err = capsys.readouterr().err
    assert (
        "images.tar.gz: the download's checksum does not match (expected md5:000" in err and "it was discarded" in err
    )
    got = hashlib.md5((m["from"][0]).read_bytes()).hexdigest()
    assert f", got {got})" in err and err.rstrip().endswith("pass it with --from")  # whole, not cut mid-word
    dl = tmp_path / "data" / "downloads"
    assert not (dl / "images.tar.gz").exists() and not (dl / "images.tar.gz.part").exists()
    assert not (tmp_path / "data" / "oxford_pets").exists()


def test_partial_download_is_resumed_with_a_range_request(pets, tmp_path):
    m, _, log = pets
    full = m["from"][0].read_bytes()
    dl = tmp_path / "data" / "downloads"
    dl.mkdir(parents=True)
    half = len(full) // 2
    (dl / "images.tar.gz.part").write_bytes(full[:half])
    assert prepare(m, tmp_path) == 0
    assert ("/images.tar.gz", f"bytes={half}-") in log
    assert (dl / "images.tar.gz").read_bytes() == full and not (dl / "images.tar.gz.part").exists()


def test_no_download_offered_without_a_checksum(tmp_path, capsys):
    assert main(["data", "prepare", "imagenet-a", "--download", "--out", str(tmp_path)]) == 2
    assert "has no download with a known checksum" in capsys.readouterr().err
