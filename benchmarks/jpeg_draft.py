"""`fdalign eval --jpeg-draft` measured on the world: the accuracy change and the decode time, side by side.

The world rendered at ``--image-size`` px (default 256, four times the shipped model's 64 px input, as
a 500 px photo is to a 224 px model), its test split and every OOD style written as JPEG (quality 90).
The shipped ``fdalign-world`` model's zero-shot top-1 on each set, decoded exactly and in draft mode
(``fdalign zeroshot ... [--jpeg-draft]``, no caches), then the time of the decode + resize + crop alone over
every image, exact and draft in alternation (median of ``--repeats``), as a ratio.

    python benchmarks/jpeg_draft.py                       # 256 px, 40 test images per class and style
    python benchmarks/jpeg_draft.py --image-size 512 --per-class 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def render_jpeg_world(root: Path, size: int, per_class: int) -> Path:
    """``root/world``: ``fdalign world render`` at ``size`` px, every image re-written as JPEG (q 90)."""
    from PIL import Image

    world = root / "world"
    subprocess.run(
        [sys.executable, "-m", "fdalign", "world", "render", "--out", str(world), "--image-size", str(size),
         "--train-per-class", "1", "--val-per-class", "1", "--test-per-class", str(per_class), "--no-progress"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for png in sorted(world.rglob("*.png")):
        Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
        png.unlink()
    return world


def ood_sets(world: Path) -> list[str]:
    return [f"{d.name}={d}" for d in sorted((world / "ood").iterdir()) if d.is_dir()]


def zeroshot(world: Path, out: Path, draft: bool) -> dict:
    cmd = [sys.executable, "-m", "fdalign", "zeroshot", "--model", "fdalign-world", "--data", str(world),
           "--out", str(out), "--no-pixel-cache", "--no-progress"]  # fmt: skip
    for o in ood_sets(world):
        cmd += ["--ood", o]
    subprocess.run(cmd + (["--jpeg-draft"] if draft else []), check=True, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    return {s: next(iter(rows.values()))["top1"] for s, rows in metrics.items()}


def decode_seconds(files: list[Path], draft: int | None, transform) -> float:
    from PIL import Image

    t0 = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            if draft:
                im.draft("RGB", (draft, draft))
            transform(im.convert("RGB"))
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--per-class", type=int, default=40, help="test images per class (and per OOD style)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    from fdalign.backends import load_clip
    from fdalign.data.datasets import draft_size
    from fdalign.eval.pixelcache import split_transform

    with tempfile.TemporaryDirectory() as tmp:
        world = render_jpeg_world(Path(tmp), args.image_size, args.per_class)
        exact = zeroshot(world, Path(tmp) / "exact", draft=False)
        draft = zeroshot(world, Path(tmp) / "draft", draft=True)
        transform = load_clip("fdalign-world", device="cpu").preprocess_eval()
        size, pil = draft_size(transform), split_transform(transform).pil
        files = sorted(world.rglob("*.jpg"))
        files = [f for f in files if "/train/" not in str(f) and "/val/" not in str(f)]
        times: dict[str, list[float]] = {"exact": [], "draft": []}
        for _ in range(args.repeats):
            times["exact"].append(decode_seconds(files, None, pil))
            times["draft"].append(decode_seconds(files, size, pil))

    print(f"world at {args.image_size} px JPEG (q 90), model input {size} px; fdalign-world zero-shot top-1 (%):")
    print(f"{'set':<16}{'exact':>8}{'draft':>8}{'change':>8}")
    for s in exact:
        print(f"{s:<16}{exact[s]:8.2f}{draft[s]:8.2f}{draft[s] - exact[s]:+8.2f}")
    mean = statistics.fmean(draft[s] - exact[s] for s in exact)
    print(f"{'mean change':<16}{'':>16}{mean:+8.2f}")
    e, d = statistics.median(times["exact"]), statistics.median(times["draft"])
    print(
        f"decode + resize + crop of {len(files)} images, median of {args.repeats}: exact {e * 1e3 / len(files):.2f} ms,"
        f" draft {d * 1e3 / len(files):.2f} ms per image; draft is {e / d:.2f}x faster"
    )


if __name__ == "__main__":
    main()
