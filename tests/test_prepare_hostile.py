"""Hostile archives and annotation files: `fdalign data prepare` writes nothing outside --out.

Every case builds an archive (tar, tar.gz and zip where the attack fits the format) whose expected
counts claim the hostile member as an image, so that taking it would succeed: the prepare must
instead exit 2 with one line, and a snapshot of everything under the test's folder except --out
(sources, planted victims, the folders above --out) must be the same before and after.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

import _archives as A
from fdalign.cli import main

W1, W2 = A.WNIDS[0], A.WNIDS[1]
UP5 = "../../../../../"  # from OUT/.<folder>.partial/<class>/ up to the test's folder (OUT is 4 deep)


def run(*argv) -> int:
    return main([str(a) for a in argv])


def snapshot(root: Path, skip: Path) -> dict:
    """Every path under ``root`` except ``skip``: its kind and content (bytes hash or link target)."""
    out = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = Path(dirpath) / name
            if p == skip:
                continue
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[str(p)] = ("dir",)
            else:
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), st.st_mtime_ns)
    return out


def hostile_archive(path: Path, members: list[tuple]) -> Path:
    """Members ``(name, kind, data_or_target)``; kind: file, symlink, hardlink, chardev, fifo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".zip"):
        kinds = {"file": 0o100644, "symlink": 0o120777, "hardlink": 0o120777, "chardev": 0o020644, "fifo": 0o010644}
        with zipfile.ZipFile(path, "w") as zf:
            for name, kind, data in members:
                info = zipfile.ZipInfo(name)
                info.external_attr = kinds[kind] << 16
                info.create_system = 3  # Unix: the file type above is meaningful
                zf.writestr(info, data if isinstance(data, bytes) else data.encode())
        return path
    types = {
        "file": tarfile.REGTYPE,
        "symlink": tarfile.SYMTYPE,
        "hardlink": tarfile.LNKTYPE,
        "chardev": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = types[kind]
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.linkname = data if isinstance(data, str) else ""
                tf.addfile(info)
    return path


def legit_a() -> list[tuple]:
    return [(f"imagenet-a/{w}/{w}_{i}.jpg", "file", A.jpeg(i)) for w in (W1, W2) for i in range(2)]


EVIL = b"EVIL BYTES"
# (case, preparer, top-level archive stem, the hostile members, formats it applies to)
MEMBER_CASES = {
    "dotdot-escape": ("imagenet-a", [(f"imagenet-a/{W1}/{UP5}pwned.jpg", "file", EVIL)], "all"),
    "dotdot-in-class": ("imagenet-a", [(f"imagenet-a/{W1}/../{W1}/../../{UP5}pwned.jpg", "file", EVIL)], "all"),
    "absolute-name": ("imagenet-a", [("/tmp/imagenet-a/" + W1 + "/pwned.jpg", "file", EVIL)], "all"),
    "symlink-member": ("imagenet-a", [(f"imagenet-a/{W1}/link.jpg", "symlink", "/etc/passwd")], "all"),
    "symlink-to-victim": ("imagenet-a", [(f"imagenet-a/{W1}/link.jpg", "symlink", f"../../{UP5}pwned.jpg")], "all"),
    "hardlink-member": ("imagenet-a", [(f"imagenet-a/{W1}/hard.jpg", "hardlink", "/etc/passwd")], "tar"),
    "device-member": ("imagenet-a", [(f"imagenet-a/{W1}/dev.jpg", "chardev", "")], "all"),
    "fifo-member": ("imagenet-a", [(f"imagenet-a/{W1}/fifo.jpg", "fifo", "")], "all"),
    "control-char-name": ("imagenet-a", [(f"imagenet-a/{W1}/evil\nname.jpg", "file", EVIL)], "all"),
    "too-long-name": ("imagenet-a", [(f"imagenet-a/{W1}/{'x' * 300}.jpg", "file", EVIL)], "all"),
    "backslash-escape": ("imagenet-a", [(f"imagenet-a/{W1}/..\\..\\..\\pwned.jpg", "file", EVIL)], "all"),
    "dot-members-in-class": (
        "imagenet-sketch",
        [(f"sketch/{W1}/..", "file", EVIL), (f"sketch/{W1}/.", "file", EVIL)],
        "all",
    ),
    "places-class-dotdot": ("places", [("places365_standard/train/../pwned.jpg", "file", EVIL)], "all"),
    "plantae-class-dotdot": ("plantae", [("Plantae/../pwned.jpg", "file", EVIL)], "all"),
}
FORMATS = {"tar": ".tar", "tar.gz": ".tar.gz", "zip": ".zip"}


def _legit(name: str) -> tuple[list[tuple], int, int]:
    """The legitimate members of a miniature, its images and classes."""
    if name == "imagenet-a":
        return legit_a(), 4, 2
    if name == "imagenet-sketch":
        return [(f"sketch/{w}/s_{i}.JPEG", "file", A.jpeg(i)) for w in (W1, W2) for i in range(2)], 4, 2
    if name == "places":
        return [(f"places365_standard/train/{c}/0000000{i}.jpg", "file", A.jpeg(i)) for c in "ab" for i in (1, 2)], 4, 2
    return [(f"Plantae/Sp_{c}/{i:032x}.jpg", "file", A.jpeg(i)) for c in "ab" for i in range(2)], 4, 2


@pytest.fixture
def arena(tmp_path):
    """--out four folders deep, a victim file where escapes land, and a checker of the snapshot."""
    out = tmp_path / "a" / "b" / "c" / "out"
    out.parent.mkdir(parents=True)
    for victim in (tmp_path / "pwned.jpg", tmp_path / "a" / "pwned.jpg", tmp_path / "a" / "b" / "c" / "pwned.jpg"):
        victim.write_bytes(b"ORIGINAL")

    class Arena:
        def __init__(self):
            self.out, self.root = out, tmp_path

        def start(self):
            self.before = snapshot(tmp_path, out)

        def held(self):
            assert snapshot(tmp_path, out) == self.before

    return Arena()


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err, err
    return err


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("case", sorted(MEMBER_CASES))
def test_hostile_member_writes_nothing_outside_out(case, fmt, arena, capsys):
    name, evil, forms = MEMBER_CASES[case]
    if forms == "tar" and fmt == "zip":
        pytest.skip("a zip has no hard links")
    members, n, c = _legit(name)
    stem = {
        "imagenet-a": "imagenet-a",
        "imagenet-sketch": "ImageNet-Sketch",
        "places": "places365",
        "plantae": "plantae",
    }
    archive = hostile_archive(arena.root / "dl" / f"{stem[name]}{FORMATS[fmt]}", members + evil)
    # the archive claims the hostile member as one more image: taking it would pass the count check
    exp = A.expect(arena.root / "dl" / "expect.json", {"test": (n + 1, c)})
    arena.start()
    code = run("data", "prepare", name, "--from", archive, "--out", arena.out, "--expect-counts", exp, "--no-progress")
    err = one_error_line(capsys)
    assert code == 2
    assert "ignored 1 " in err or "ignored 2 " in err  # the dropped members are said
    arena.held()
    assert not (arena.out / name).exists() and not (arena.out / f".{name}.lock").exists()


def test_sun397_member_escaping_through_nested_class_is_refused(arena, capsys):
    m = A.coop("sun397", arena.root / "dl")
    tar = m["from"][0]
    with tarfile.open(tar) as tf:
        files = {i.name: tf.extractfile(i).read() for i in tf.getmembers() if i.isfile()}
    evil = f"a/abbey/../../{UP5}pwned.jpg"
    files[f"SUN397/{evil}"] = EVIL
    A.write_tar(tar, files)
    split = json.loads(m["split"].read_text())
    split["test"].append([evil, 0, "abbey"])  # the split file (from the same mirror) names it
    m["split"].write_text(json.dumps(split))
    exp = A.expect(arena.root / "dl" / "expect.json", {"train": (6, 3), "val": (3, 3), "test": (4, 3)})
    arena.start()
    code = run(
        "data", "prepare", "sun397", "--from", tar, "--split-file", m["split"], "--out", arena.out,
        "--expect-counts", exp, "--no-progress",
    )  # fmt: skip
    err = one_error_line(capsys)
    assert code == 2 and "match no SUN397 image" in err
    arena.held()


@pytest.mark.parametrize("word", ["../../../../../pwned", "..", "n01440764/../../x"])
def test_imagenet_solution_csv_class_word_escaping(word, arena, capsys):
    m = A.imagenet(arena.root / "dl", labels="csv")
    csv = m["from"][2]
    lines = csv.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + f",{word} 1 2 3 4"
    csv.write_text("\n".join(lines) + "\n")
    exp = A.expect(arena.root / "dl" / "expect.json", m["counts"])
    arena.start()
    code = run("data", "prepare", "imagenet", "--from", *m["from"], "--out", arena.out, "--expect-counts", exp)
    err = one_error_line(capsys)
    assert code == 2 and "cannot be a file or folder name under --out" in err
    arena.held()


def test_cars_devkit_class_named_dotdot(arena, capsys, monkeypatch):
    import numpy as np
    import scipy.io

    m = A.cars_target(arena.root / "dl")
    names = np.empty((1, 2), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", ".."]
    meta = io.BytesIO()
    scipy.io.savemat(meta, {"class_names": names})
    with tarfile.open(m["from"][1]) as tf:
        files = {i.name: tf.extractfile(i).read() for i in tf.getmembers() if i.isfile()}
    files["devkit/cars_meta.mat"] = meta.getvalue()
    A.write_tar(m["from"][1], files)
    exp = A.expect(arena.root / "dl" / "expect.json", m["counts"])
    arena.start()
    code = run("data", "prepare", "cars-target", "--from", *m["from"], "--out", arena.out, "--expect-counts", exp)
    err = one_error_line(capsys)
    assert code == 2 and "cars_meta.mat" in err and "'..'" in err
    arena.held()


def test_aircraft_variant_named_dotdot(arena, capsys):
    m = A.aircraft(arena.root / "dl")
    tar = m["from"][0]
    with tarfile.open(tar) as tf:
        files = {i.name: tf.extractfile(i).read() for i in tf.getmembers() if i.isfile()}
    for k in list(files):
        files[k] = files[k].replace(b"A300B4", b"..") if k.endswith(".txt") else files[k]
    A.write_tar(tar, files)
    exp = A.expect(arena.root / "dl" / "expect.json", m["counts"])
    arena.start()
    code = run("data", "prepare", "fgvc_aircraft", "--from", tar, "--out", arena.out, "--expect-counts", exp)
    err = one_error_line(capsys)
    assert code == 2 and "variants.txt" in err
    arena.held()


# ----------------------------------------------------------------------------------------------
# --from folders: links are not followed unless asked


def _folder_with_links(root: Path, secret: Path) -> Path:
    top = root / "imagenet-a"
    for w in (W1, W2):
        (top / w).mkdir(parents=True)
        for i in range(2):
            (top / w / f"{w}_{i}.jpg").write_bytes(A.jpeg(i))
    os.symlink(secret, top / W1 / "secret.jpg")  # a file link pointing outside
    os.symlink(secret.parent, top / "n01484850")  # a folder link (a whole class) pointing outside
    return top


def test_symlinks_in_a_from_folder_are_not_followed(arena, capsys):
    secret_dir = arena.root / "private"
    secret_dir.mkdir()
    secret = secret_dir / "n01484850_0.jpg"
    secret.write_bytes(b"SECRET")
    top = _folder_with_links(arena.root / "dl", secret)
    exp = A.expect(arena.root / "dl" / "expect.json", {"test": (6, 3)})  # claims the linked files
    arena.start()
    code = run(
        "data", "prepare", "imagenet-a", "--from", top, "--out", arena.out, "--expect-counts", exp,
        "--link", "copy", "--no-progress",
    )  # fmt: skip
    err = one_error_line(capsys)
    assert code == 2 and "ignored 2 symbolic or hard links" in err and "--follow-symlinks" in err
    arena.held()
    # the same folder prepares without the links, and says it dropped them
    exp.write_text(json.dumps({"test": [4, 2]}))
    assert run("data", "prepare", "imagenet-a", "--from", top, "--out", arena.out, "--expect-counts", exp,
               "--link", "copy", "--no-progress") == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "ignored 2 symbolic or hard links" in out
    man = json.loads((arena.out / "imagenet-a" / "prepared.json").read_text())
    assert man["dropped"]["link"]["count"] == 2
    assert not any(b"SECRET" in p.read_bytes() for p in (arena.out / "imagenet-a").rglob("*.jpg"))
    # asked to, it follows them
    exp.write_text(json.dumps({"test": [6, 3]}))
    assert run("data", "prepare", "imagenet-a", "--from", top, "--out", arena.out / "f", "--expect-counts", exp,
               "--link", "copy", "--follow-symlinks", "--no-progress") == 0  # fmt: skip
    assert (arena.out / "f" / "imagenet-a" / W1 / "secret.jpg").read_bytes() == b"SECRET"


# ----------------------------------------------------------------------------------------------
# The staging folder: planted links, foreign files, a resume with another archive, the space check


def _a_tar(root: Path, seed: int = 0) -> Path:
    A.expect(root.parent / "expect-a.json", {"test": (6, 2)})  # before any snapshot
    return hostile_archive(
        root / "imagenet-a.tar",
        [(f"imagenet-a/{w}/{w}_{i}.jpg", "file", A.jpeg(seed * 100 + i)) for w in (W1, W2) for i in range(3)],
    )


def _prep_a(arena, tar, *extra) -> int:
    exp = tar.parent.parent / "expect-a.json"
    return run("data", "prepare", "imagenet-a", "--from", tar, "--out", arena.out, "--expect-counts", exp,
               "--no-progress", *extra)  # fmt: skip


def test_symlink_planted_in_the_staging_folder_is_removed_not_followed(arena, capsys):
    tar = _a_tar(arena.root / "dl")
    outside = arena.root / "a" / "elsewhere"
    outside.mkdir()
    stage = arena.out / ".imagenet-a.partial"
    stage.mkdir(parents=True)
    os.symlink(outside, stage / W1)  # a class folder redirected outside --out
    os.symlink(arena.root / "pwned.jpg", stage / "stray.jpg")  # a file link to a victim
    arena.start()
    assert _prep_a(arena, tar) == 0
    arena.held()
    assert sorted(p.name for p in (arena.out / "imagenet-a" / W1).iterdir()) == [f"{W1}_{i}.jpg" for i in range(3)]
    man = json.loads((arena.out / "imagenet-a" / "prepared.json").read_text())
    assert sorted(man["left_out_of_staging"]) == [W1, "stray.jpg"]
    assert "were not written by this prepare and were left out" in capsys.readouterr().out


def test_staging_folder_that_is_a_link_is_refused(arena, capsys):
    tar = _a_tar(arena.root / "dl")
    outside = arena.root / "a" / "elsewhere"
    outside.mkdir()
    arena.out.mkdir()
    os.symlink(outside, arena.out / ".imagenet-a.partial")
    arena.start()
    assert _prep_a(arena, tar) == 2
    assert "is a symbolic link or a file" in one_error_line(capsys)
    arena.held()


def test_foreign_files_in_partial_are_left_out_and_said(arena, capsys):
    tar = _a_tar(arena.root / "dl")
    stage = arena.out / ".imagenet-a.partial"
    (stage / W1).mkdir(parents=True)
    (stage / W1 / "planted.jpg").write_bytes(A.jpeg(9))
    (stage / "n09999999").mkdir()
    (stage / "n09999999" / "x.jpg").write_bytes(A.jpeg(8))
    assert _prep_a(arena, tar) == 0
    root = arena.out / "imagenet-a"
    assert not (root / W1 / "planted.jpg").exists() and not (root / "n09999999").exists()
    man = json.loads((root / "prepared.json").read_text())
    assert man["counts"]["test"]["images"] == 6
    assert sorted(man["left_out_of_staging"]) == [f"{W1}/planted.jpg", "n09999999"]
    assert "2 files or folders" in capsys.readouterr().out


def _interrupt_after(monkeypatch, n):
    from fdalign.data.prepare import place

    real, calls = place._place, []

    def dies(*a):
        if len(calls) == n:
            raise KeyboardInterrupt
        calls.append(a)
        return real(*a)

    monkeypatch.setattr(place, "_place", dies)
    return lambda: monkeypatch.setattr(place, "_place", real)


def test_resume_with_another_archive_keeps_none_of_the_first_ones_bytes(arena, monkeypatch):
    first = _a_tar(arena.root / "dl1", seed=1)
    second = _a_tar(arena.root / "dl2", seed=2)  # same names, same sizes (16x16 JPEGs), other bytes
    restore = _interrupt_after(monkeypatch, 4)
    assert _prep_a(arena, first) == 130
    restore()
    assert _prep_a(arena, second) == 0
    root = arena.out / "imagenet-a"
    with tarfile.open(second) as tf:
        for i in tf.getmembers():
            assert (root / i.name.split("/", 1)[1]).read_bytes() == tf.extractfile(i).read()
    man = json.loads((root / "prepared.json").read_text())
    assert man["placed"]["copy"] + man["placed"]["kept"] == 6
    assert man["sources"][0]["sha256"] == hashlib.sha256(second.read_bytes()).hexdigest()


def test_resume_with_the_same_archive_keeps_the_staged_files(arena, monkeypatch):
    tar = _a_tar(arena.root / "dl")
    restore = _interrupt_after(monkeypatch, 4)
    assert _prep_a(arena, tar) == 130
    restore()
    assert _prep_a(arena, tar) == 0
    man = json.loads((arena.out / "imagenet-a" / "prepared.json").read_text())
    assert man["placed"]["kept"] == 4 and man["placed"]["copy"] == 2 and man["kept_as"]["copy"] == 4


def test_space_check_after_a_failure_counts_only_what_is_left(arena, monkeypatch, capsys):
    import shutil

    from fdalign.data.prepare import place

    tar = _a_tar(arena.root / "dl")
    with tarfile.open(tar) as tf:
        sizes = sorted(i.size for i in tf.getmembers())
    restore = _interrupt_after(monkeypatch, 4)
    assert _prep_a(arena, tar) == 130
    restore()
    left = sum(sizes) - sum(os.path.getsize(p) for p in (arena.out / ".imagenet-a.partial").rglob("*.jpg"))
    extra = 40  # classnames-free: imagenet-a writes no extra files; room for none of the staged ones again
    free = left + extra
    monkeypatch.setattr(place.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - free, free))
    assert left < sum(sizes) and sum(sizes) > free  # counting the staged files again would refuse
    assert _prep_a(arena, tar) == 0


def test_lock_file_is_not_left_in_out(arena):
    assert _prep_a(arena, _a_tar(arena.root / "dl")) == 0
    assert sorted(p.name for p in arena.out.iterdir()) == ["imagenet-a"]


# ----------------------------------------------------------------------------------------------
# The path function, on generated names


def test_path_function_refuses_what_the_issue_names():
    from fdalign.data.prepare.paths import UnsafeName, join, problem

    for bad in ["", ".", "..", "a/b", "a\\b", "a\x00b", "a\nb", "a\x7fb", "x" * 256, "é" * 128, "a\u2028b"]:
        assert problem(bad) is not None, bad
        with pytest.raises(UnsafeName):
            join("train", bad, "x.jpg")
    for good in ["polka-dotted", "Ram C-V Cargo Van Minivan 2012", "F-16A-B", "...", ".hidden", "x" * 255, "é" * 127]:
        assert problem(good) is None, good


def test_path_function_on_generated_names(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from fdalign.data.prepare.paths import UnsafeName, inside, join, problem
    from fdalign.data.prepare.sources import drop_reason

    stage = tmp_path / "stage"
    stage.mkdir()
    base = os.path.realpath(stage)
    alphabet = st.one_of(st.sampled_from(list("./\\\x00\n\t\x7f\u2028.-_ aé")), st.characters())
    part = st.one_of(
        st.sampled_from(["..", ".", "", "../x", "a/../.."]),
        st.text(alphabet, max_size=12),
        st.text(alphabet, min_size=250, max_size=300),
    )

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(part, min_size=1, max_size=4))
    def prop(parts):
        try:
            rel = join(*parts)
        except UnsafeName:
            # refused only for one of the reasons it names, checked independently here
            assert (
                any(
                    p in ("", ".", "..")
                    or "/" in p
                    or "\\" in p
                    or any(
                        ord(ch) < 32 or ord(ch) == 127 or ch in "\x85\u2028\u2029" or 0x80 <= ord(ch) < 0xA0 for ch in p
                    )
                    or len(p.encode("utf-8", "surrogatepass")) > 255
                    or any(0xD800 <= ord(ch) <= 0xDFFF for ch in p)
                    for p in parts
                )
                or len("/".join(parts).encode("utf-8", "surrogatepass")) > 1024
            )
            return
        assert os.path.normpath(rel) == rel and not rel.startswith("/")  # nothing for a resolver to collapse
        dest = inside(stage, rel, mkdir=False)
        assert os.path.commonpath([base, os.path.realpath(dest)]) == base
        assert os.path.realpath(dest) == os.path.join(base, *parts)
        # a member with this name is kept by the lister, and every kept name builds a safe path
        assert drop_reason(rel) in (None, "system")
        assert all(problem(p) is None for p in parts)

    prop()


def test_member_names_kept_by_the_lister_always_build_safe_paths():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from fdalign.data.prepare.paths import split_rel
    from fdalign.data.prepare.sources import _clean, drop_reason

    seg = st.one_of(st.sampled_from(["..", ".", "", "__MACOSX", "._x.jpg", "a", "b c", "\x00", "Thumbs.db"]), st.text())

    @settings(max_examples=200, deadline=None)
    @given(st.lists(seg, min_size=1, max_size=6), st.booleans())
    def prop(parts, absolute):
        name = _clean(("/" if absolute else "") + "/".join(parts))
        if drop_reason(name) is None:
            split_rel(name)  # raises if the lister let an unsafe name through
            assert ".." not in name.split("/") and not name.startswith("/")

    prop()


def test_inside_refuses_links_and_files_on_the_way(tmp_path):
    from fdalign.data.prepare.paths import inside
    from fdalign.errors import FDAlignError

    stage, outside = tmp_path / "stage", tmp_path / "outside"
    stage.mkdir()
    outside.mkdir()
    os.symlink(outside, stage / "cls")
    with pytest.raises(FDAlignError, match="is a symbolic link in the staging folder"):
        inside(stage, "cls/x.jpg")
    os.symlink(stage, stage / "loop")  # even a link back inside is not a folder prepare made
    with pytest.raises(FDAlignError, match="symbolic link"):
        inside(stage, "loop/x.jpg")
    (stage / "file").write_bytes(b"")
    with pytest.raises(FDAlignError, match="is a file in the staging folder"):
        inside(stage, "file/x.jpg")
    assert inside(stage, "new/deeper/x.jpg") == stage.resolve() / "new" / "deeper" / "x.jpg"
    assert (stage / "new" / "deeper").is_dir() and list(outside.iterdir()) == []


def test_a_link_named_with_from_is_followed(tmp_path, capsys):
    """Only links found inside a --from folder are dropped; one the user names is theirs to follow."""
    m = A.imagenet(tmp_path / "dl", labels="csv")
    link = tmp_path / "LOC_val_solution.csv"
    os.symlink(m["from"][2], link)
    exp = A.expect(tmp_path / "e.json", m["counts"])
    assert run("data", "prepare", "imagenet", "--from", m["from"][0], m["from"][1], link, "--out", tmp_path / "o",
               "--expect-counts", exp, "--no-progress") == 0, capsys.readouterr().err  # fmt: skip
