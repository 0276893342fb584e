"""`fdalign data prepare imagenet` from an extracted tree: hard links, symbolic links and plain copies
side by side in one run, on a generated miniature ImageNet; files per second and the disk each uses.

Also the same data from the official packing (a tar of per-class tars, flat val + devkit), which is
always extracted. "new disk" counts the blocks of files that do not share an inode with the source
(a hard link shares its file's blocks; a symbolic link is a few bytes of metadata).

    python benchmarks/prepare.py --classes 50 --per-class 100
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path


def _tree(root: Path, wnids, per_class: int, size: int) -> int:
    """An extracted ImageNet: train/<wnid>/<wnid>_N.JPEG and val/<wnid>/... of ``size``-byte files."""
    n = 0
    for w in wnids:
        for split, count in (("train", per_class), ("val", max(1, per_class // 10))):
            d = root / split / w
            d.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                name = f"{w}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{n:08d}.JPEG"
                (d / name).write_bytes(os.urandom(size))
                n += 1
    return n


def _archives(tree: Path, out: Path, wnids) -> list[Path]:
    import tarfile

    train = out / "ILSVRC2012_img_train.tar"
    with tarfile.open(train, "w") as tf:
        for w in wnids:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted((tree / "train" / w).iterdir()):
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{w}.tar")
            info.size = buf.tell()
            buf.seek(0)
            tf.addfile(info, buf)
    val = out / "val"  # already sorted into wnid folders (what most users have after extraction)
    os.symlink((tree / "val").resolve(), val)
    return [train, val]


def _new_disk(folder: Path, source_inodes: set) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if st.st_ino not in source_inodes:
                total += st.st_blocks * 512
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--bytes", type=int, default=110_000, help="bytes per image (ImageNet's mean is about 110 kB)")
    args = p.parse_args(argv)

    from fdalign.data.prepare import get, prepare

    wnids = [f"n{10000000 + i:08d}" for i in range(args.classes)]
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        tmp = Path(tmp)
        n = _tree(tmp / "tree", wnids, args.per_class, args.bytes)
        inodes = {os.stat(os.path.join(r, f)).st_ino for r, _, fs in os.walk(tmp / "tree") for f in fs}
        arch = _archives(tmp / "tree", tmp, wnids)
        expect = tmp / "expect.json"
        per_val = max(1, args.per_class // 10)
        expect.write_text(
            f'{{"train": [{args.classes * args.per_class}, {args.classes}], '
            f'"val": [{args.classes * per_val}, {args.classes}]}}'
        )
        get("imagenet")  # loads the registry
        from fdalign.data.imagenet import imagenet_classnames, imagenet_wnids

        imagenet_wnids(), imagenet_classnames()  # their first call imports timm: not part of any timing
        print(
            f"miniature ImageNet: {args.classes} classes, {n} files of {args.bytes / 1e3:.0f} kB "
            f"({n * args.bytes / 1e6:.0f} MB)"
        )
        print(f"{'source':<22}{'placed as':<11}{'files/s':>10}{'seconds':>9}{'new disk MB':>13}")
        rows = []
        for label, src, mode in [
            ("extracted tree", [tmp / "tree"], "hard"),
            ("extracted tree", [tmp / "tree"], "symbolic"),
            ("extracted tree", [tmp / "tree"], "copy"),
            ("train tar of tars", arch, "hard"),
        ]:
            out = tmp / f"out-{len(rows)}"
            t = time.perf_counter()
            prepare("imagenet", src, out, link=mode, expect_counts=expect)
            dt = time.perf_counter() - t
            mb = _new_disk(out / "imagenet", inodes) / 1e6
            placed = mode if label == "extracted tree" else "extracted"  # (its val/ folder is hard-linked)
            rows.append((label, placed, n / dt, dt, mb))
            print(f"{label:<22}{placed:<11}{n / dt:>10.0f}{dt:>9.2f}{mb:>13.1f}")
        hard, copy = rows[0], rows[2]
        print(
            f"hard links vs copy: {hard[2] / copy[2]:.1f}x the files/s, {hard[4]:.1f} MB vs {copy[4]:.1f} MB of new disk"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
