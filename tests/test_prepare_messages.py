"""What `fdalign data prepare` and `data check` say: what was expected and what was found, truncated
tars cut inside a header, torchvision's advice kept out, whole checksum messages, --mirror, and
CoOp's split files fetched through gdown (a loopback server stands in for Google Drive)."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

import _archives as A
from fdalign.cli import main


def run(*argv) -> int:
    return main([str(a) for a in argv])


def err_of(capsys) -> str:
    return capsys.readouterr().err


def test_wrong_archive_says_what_it_looks_like(tmp_path, capsys):
    v = A.variant_archives(tmp_path / "dl")
    r_tar = v["imagenet-r"][0][0]
    assert run("data", "prepare", "imagenet-a", "--from", r_tar, "--out", tmp_path / "o") == 2
    err = err_of(capsys)
    assert "0 images in 0 classes" in err and "expected imagenet-a/<wnid>/<file>.jpg" in err
    assert "this looks like ImageNet-R: 200 classes of renditions" in err and "fdalign data prepare imagenet-r" in err
    assert len(err.strip().splitlines()) == 1
    # the wrong ImageNet-V2 variant
    with tarfile.open(v["imagenetv2"][0][0]) as tf:
        files = {i.name.replace("matched-frequency", "threshold0.7"): tf.extractfile(i).read() for i in tf.getmembers()}
    thr = A.write_tar(tmp_path / "dl" / "imagenetv2-threshold0.7.tar.gz", files)
    assert run("data", "prepare", "imagenetv2", "--from", thr, "--out", tmp_path / "o") == 2
    err = err_of(capsys)
    assert "expected imagenetv2-matched-frequency-format-val/<0..999>/<file>.jpeg" in err
    assert "this looks like ImageNet-V2 threshold0.7" in err and "prepare imagenetv2-threshold0.7" in err
    # files of nothing known: their names are said
    junk = A.write_tar(tmp_path / "dl" / "junk.tar", {"photos/cat.png": b"x", "photos/dog.png": b"y"})
    assert run("data", "prepare", "imagenet-sketch", "--from", junk, "--out", tmp_path / "o") == 2
    err = err_of(capsys)
    assert "expected sketch/<wnid>/<file>; found 3 files: junk.tar, junk.tar/photos/cat.png" in err


def test_plain_tar_cut_inside_a_header_block_is_truncated(tmp_path, capsys):
    paths, counts = A.variant_archives(tmp_path / "dl")["imagenet-a"]
    tar = paths[0]
    with tarfile.open(tar) as tf:
        third = tf.getmembers()[2]
    data = tar.read_bytes()
    tar.write_bytes(data[: third.offset + 100])  # inside the third member's 512-byte header
    with tarfile.open(tar) as tf:  # tarfile itself lists two members without a word
        assert len(tf.getmembers()) == 2
    exp = A.expect(tmp_path / "e.json", counts)
    assert run("data", "prepare", "imagenet-a", "--from", tar, "--out", tmp_path / "o", "--expect-counts", exp) == 2
    err = err_of(capsys)
    assert "imagenet-a.tar cannot be read as a tar or zip archive" in err and "a cut header" in err
    assert "download it again" in err and "images in" not in err  # said as truncated, not as a count
    # cut exactly between two members: no end-of-archive block
    tar.write_bytes(data[: third.offset])
    assert run("data", "prepare", "imagenet-a", "--from", tar, "--out", tmp_path / "o", "--expect-counts", exp) == 2
    assert "no end-of-archive block" in err_of(capsys)


def test_data_check_knows_describable_textures_as_dtd():
    from fdalign.data.check import find_benchmark
    from fdalign.data.datasets import benchmark_from_filename

    name = benchmark_from_filename("/data/dtd/split_zhou_DescribableTextures.json")
    assert find_benchmark(name).name == "DTD" and find_benchmark(name).test_size == 1692


def test_torchvisions_download_advice_is_not_ours(tmp_path, capsys):
    m = A.coop("oxford_flowers", tmp_path / "dl")  # its .mat files are not the official ones (MD5)
    exp = A.expect(tmp_path / "e.json", m["counts"])
    code = run("data", "prepare", "oxford_flowers", "--from", *m["from"], "--split-file", m["split"],
               "--out", tmp_path / "o", "--expect-counts", exp)  # fmt: skip
    err = err_of(capsys)
    assert code == 2 and "download=True" not in err and "MD5" in err and "not the official file" in err


def test_data_check_says_prepared_once(tmp_path, capsys):
    m = A.cub(tmp_path / "dl")
    exp = A.expect(tmp_path / "e.json", m["counts"])
    assert run("data", "prepare", "cub", "--from", *m["from"], "--out", tmp_path / "d", "--expect-counts", exp) == 0
    capsys.readouterr()
    assert run("data", "check", tmp_path / "d" / "CUB_200_2011" / "images", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "note: prepared: CUB-200-2011 by fdalign" in out and "prepared: prepared" not in out


def test_expect_counts_recorded_as_an_absolute_path(tmp_path, monkeypatch):
    m = A.cub(tmp_path / "dl")
    A.expect(tmp_path / "e.json", m["counts"])
    monkeypatch.chdir(tmp_path)
    assert run("data", "prepare", "cub", "--from", *m["from"], "--out", "d", "--expect-counts", "e.json") == 0
    man = json.loads((tmp_path / "d" / "CUB_200_2011" / "prepared.json").read_text())
    assert man["expected_from"] == f"--expect-counts {tmp_path / 'e.json'}"


def test_ood_table_keeps_its_columns_with_long_names():
    from fdalign.data.check import CheckReport, OODCheck, SplitStats, format_report

    r = CheckReport(stats=[SplitStats("test", 10, 2, 5, 5, 5.0, [])])
    r.ood = [
        OODCheck("a", 7, 2, [], [], False, "wnid"),
        OODCheck("imagenet-sketch-long-name", 50889, 1000, [], [], True, "wnid"),
    ]
    text = format_report(r).splitlines()
    head = next(i for i, ln in enumerate(text) if ln.lstrip().startswith("set"))
    rows = text[head : head + 4]
    col = rows[0].index("images") + len("images")  # right-aligned columns end at the same place
    assert rows[2][:col].endswith("7") and rows[3][:col].endswith("50889"), rows


# ----------------------------------------------------------------------------------------------
# --download: no network, --mirror, CoOp's split file from (a stand-in for) Google Drive


@pytest.fixture
def server(tmp_path):
    import http.server
    import threading
    from functools import partial

    root = tmp_path / "www"
    root.mkdir()
    log = []

    class H(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            log.append(self.path)
            super().do_GET()

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(H, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", log
    httpd.shutdown()
    httpd.server_close()


def _point_pets(monkeypatch, m, base):
    import dataclasses

    from fdalign.data.prepare import REGISTRY, Download, get

    p = get("oxford_pets")
    downloads = tuple(
        Download(f"{base}/{f.name}", "md5:" + hashlib.md5(f.read_bytes()).hexdigest(), f.name) for f in m["from"]
    )
    monkeypatch.setitem(REGISTRY, "oxford_pets", dataclasses.replace(p, downloads=downloads))


def _dead_url() -> str:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: a connection is refused at once
    return f"http://127.0.0.1:{port}"


def test_no_network_does_not_claim_kept_bytes(tmp_path, monkeypatch, capsys):
    m = A.coop("oxford_pets", tmp_path / "files")
    _point_pets(monkeypatch, m, _dead_url())
    code = run("data", "prepare", "oxford_pets", "--download", "--split-file", m["split"], "--out", tmp_path / "d")
    err = err_of(capsys)
    assert code == 2 and "nothing was received" in err and ".part" not in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_mirror_serves_the_files_by_name_checksums_still_checked(how, server, tmp_path, monkeypatch, capsys):
    root, url, log = server
    m = A.coop("oxford_pets", root / "mirror")
    _point_pets(monkeypatch, m, _dead_url())  # the publisher's site has moved
    exp = A.expect(tmp_path / "e.json", m["counts"])
    args = ["data", "prepare", "oxford_pets", "--download", "--split-file", m["split"], "--out", tmp_path / "d",
            "--expect-counts", exp, "--no-progress"]  # fmt: skip
    if how == "flag":
        args += ["--mirror", f"{url}/mirror"]
    else:
        monkeypatch.setenv("FDALIGN_MIRROR", f"{url}/mirror/")
    assert run(*args) == 0, err_of(capsys)
    assert sorted(log) == ["/mirror/annotations.tar.gz", "/mirror/images.tar.gz"]
    # a mirror serving other bytes is refused by the checksum
    (root / "mirror" / "images.tar.gz").write_bytes(b"not the archive")
    (tmp_path / "d" / "downloads" / "images.tar.gz").unlink()
    assert run(*args[:-5], "--out", tmp_path / "d2", *args[-3:]) == 2
    assert "checksum does not match" in err_of(capsys)


def test_coop_split_file_fetched_by_its_drive_id_with_gdown(server, tmp_path, monkeypatch, capsys):
    from fdalign.data.prepare import download, get

    root, url, log = server
    m = A.coop("oxford_pets", root / "files")
    _point_pets(monkeypatch, m, f"{url}/files")
    (root / "uc").write_bytes(m["split"].read_bytes())  # the stand-in Drive answers /uc?id=<id>
    monkeypatch.setattr(download, "DRIVE_URL", url + "/uc?id={id}")
    exp = A.expect(tmp_path / "e.json", m["counts"])
    assert run("data", "prepare", "oxford_pets", "--download", "--out", tmp_path / "d", "--expect-counts", exp,
               "--no-progress") == 0, err_of(capsys)  # fmt: skip
    assert f"/uc?id={get('oxford_pets').split_drive_id}" in log
    assert get("oxford_pets").split_drive_id == "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"  # CoOp's DATASETS.md
    got = tmp_path / "d" / "oxford_pets" / "split_zhou_OxfordPets.json"
    assert got.read_bytes() == m["split"].read_bytes()
    # Drive answering with a page instead of the file is said, and nothing is kept
    (root / "uc").write_bytes(b"<html>Google Drive - Virus scan warning</html>")
    code = run("data", "prepare", "oxford_pets", "--download", "--out", tmp_path / "d2", "--expect-counts", exp)
    err = err_of(capsys)
    assert code == 2 and "did not send a CoOp split file" in err and "drive.google.com/file/d/1501r8Ber4" in err
    assert not list((tmp_path / "d2" / "downloads").glob("split_zhou_*"))


def test_truncated_header_check_reads_no_compressed_stream(tmp_path):
    """The end-of-archive check seeks only in plain tars: a tar.gz keeps its one forward pass."""
    from fdalign.data.prepare.sources import Source

    data = A.tar_bytes({"imagenet-a/n01440764/a.jpg": A.jpeg(1)}, mode="w:gz")
    (tmp_path / "imagenet-a.tar.gz").write_bytes(data)
    src = Source(tmp_path / "imagenet-a.tar.gz")
    assert "imagenet-a.tar.gz/imagenet-a/n01440764/a.jpg" in src.members
