"""``fdalign eval RUN``'s check that no evaluated set holds the run's selection images: resolving
every file of an ImageNet-sized set vs only the files whose name a selection image has.

Builds a folder of N empty files in wnid-like class folders (reached through a symlink, as CoOp's
setup suggests), a run with 4 selection images per class drawn from another folder, and times both
ways of finding shared files; both must agree (none shared). Prints the median of a few repeats.

    python benchmarks/selection_refusal.py [--images 50000] [--classes 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from fdalign.data import LabeledSplit, Sample, save_split
from fdalign.workflows.evaluation import _refuse_selection_images


def _make(root: Path, prefix: str, n: int, classes: int) -> LabeledSplit:
    samples = []
    for i in range(n):
        c = i % classes
        rel = f"n{c:08d}/{prefix}_{i:07d}.JPEG"
        (root / f"n{c:08d}").mkdir(parents=True, exist_ok=True)
        (root / rel).touch()
        samples.append(Sample(rel, c))
    return LabeledSplit([f"c{c}" for c in range(classes)], samples, str(root), prefix)


def _resolve_all(val: LabeledSplit, split: LabeledSplit) -> int:
    chosen = {os.path.realpath(val.resolve(x)) for x in val.samples}
    return sum(os.path.realpath(split.resolve(x)) in chosen for x in split.samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=50000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _make(tmp / "data" / "val", "val", a.images, a.classes)  # the test set, listed through a symlink
        (tmp / "link").symlink_to(tmp / "data", target_is_directory=True)
        listed = _make(tmp / "data" / "val", "val", 0, a.classes)
        test = LabeledSplit(
            listed.classnames,
            [Sample(f"n{i % a.classes:08d}/val_{i:07d}.JPEG", i % a.classes) for i in range(a.images)],
            str(tmp / "link" / "val"),
            "test",
        )
        val = _make(tmp / "data" / "train", "train", 4 * a.classes, a.classes)
        save_split(val, tmp / "run" / "splits" / "val.json")
        naive, fast = [], []
        for _ in range(a.repeats):
            t = time.perf_counter()
            shared = _resolve_all(val, test)
            naive.append(time.perf_counter() - t)
            t = time.perf_counter()
            _refuse_selection_images(tmp / "run", test, [])  # raises if anything were shared
            fast.append(time.perf_counter() - t)
        assert shared == 0
    n, f = statistics.median(naive), statistics.median(fast)
    print(
        f"{a.images} images, {4 * a.classes} selection images: resolve every file {n:.3f} s, "
        f"name pre-filter {f:.3f} s (includes reading val.json); ratio {n / f:.1f}x"
    )


if __name__ == "__main__":
    main()
