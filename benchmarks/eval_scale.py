"""Evaluation of one K-shot run at ImageNet's shape, measured side by side: the path before issue 28 (one
decoding pass per distinct encoder) / one pass per set / one pass from a warm pixel cache.

A world rendered at 224 px and written as JPEG in ImageNet's shape (1000 class folders, the world's
classes repeated with other objects), N test images per size. One run's rows: zero-shot (the shipped
``fdalign-world`` model, frozen: its features come from the sweep's feature cache, warm in all three
paths, as in a sweep), fine-tuned (the shipped weights perturbed) and three WiSE-FT mixes (0.25, 0.5,
0.75, interpolated modules): 5 models, 4 encoders to run. Each path runs in a fresh process (its peak
memory is its own); the timing covers the evaluation only (not the import or the model loading).

    python benchmarks/eval_scale.py 1000 5000           # the sizes to measure
    python benchmarks/eval_scale.py 1000 5000 20000 --workers 2

Prints, per size: seconds, images per second and the ratio to the old path for each path, the pixel
cache's bytes on disk, peak RSS; then the seconds per 1000 images across sizes (constant = linear).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PATHS = ("old", "one-pass", "warm-pixels")
ALPHAS = (0.25, 0.5, 0.75)


def render_imagenet_shape(root: Path, n: int, classes: int = 1000, size: int = 224, pool: int = 60) -> Path:
    """``root/test/cNNNN/NNNNNN.JPEG``: ``n`` JPEGs (quality 90) over ``classes`` folders. A pool of rendered
    world images, each written with its own small noise (no two files alike)."""
    import numpy as np
    from PIL import Image

    from fdalign.world.generator import CLASSES, render_one

    test = root / "test"
    if (root / "done.json").is_file():
        return test
    rng = np.random.default_rng(0)
    pool_imgs = [render_one(i % len(CLASSES), 0, np.random.default_rng(i), image_size=size)[0] for i in range(pool)]
    for i in range(n):
        c = i % classes
        d = test / f"c{c:04d}"
        d.mkdir(parents=True, exist_ok=True)
        base = pool_imgs[(c % len(CLASSES)) + len(CLASSES) * ((i // classes) % (pool // len(CLASSES)))]
        noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(d / f"{i:06d}.JPEG", quality=90)
    (root / "done.json").write_text(json.dumps({"n": n}))
    return test


def build_models():
    """``{row: (encoder, head)}``: zero-shot (frozen), fine-tuned, three WiSE-FT mixes; 1000-class heads."""
    import torch

    from fdalign.backends import load_clip
    from fdalign.eval import featcache
    from fdalign.heads import PrototypeHead
    from fdalign.train.wiseft import alpha_name, wiseft_model

    backend = load_clip("fdalign-world", device="cpu")
    zs = featcache.frozen(backend.image_encoder.eval())
    import copy

    ft = copy.deepcopy(zs)
    delattr(ft, featcache._MARK)  # the fine-tuned copy is not frozen
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(1e-2 * p.abs().mean() * torch.randn(p.shape, generator=g))
    protos = torch.nn.functional.normalize(torch.randn(1000, backend.embed_dim, generator=g), dim=-1)
    head = PrototypeHead(protos, scale=backend.logit_scale)
    rows = {"zero-shot": (zs, head), "fine-tuned": (ft, head)}
    for a in ALPHAS:
        rows[alpha_name(a)] = wiseft_model(zs, ft, head, head, a)
    return backend, rows


def child(args) -> None:
    """One path on one size, in this fresh process: prints a JSON line."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    from fdalign.data import ImageDataset, open_dataset
    from fdalign.eval import EvalSet, featcache, pixelcache, run_evaluation
    from fdalign.eval.pipeline import apply_head, score

    backend, rows = build_models()
    split = open_dataset(str(Path(args.root) / "test"))["test"]
    ds = ImageDataset(split, backend.preprocess_eval())
    sets = {"test": EvalSet("test", ds)}
    pixels = args.pixels if args.path == "warm-pixels" else None
    with featcache.enabled(args.features), pixelcache.enabled(pixels) as pc:
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        if args.path == "old":  # the code before: one featcache.extract_features pass per distinct encoder
            metrics = {}
            for name, (enc, head) in rows.items():
                feats, labels = featcache.extract_features(
                    enc, ds, batch_size=args.batch_size, num_workers=args.workers, progress=False
                )
                metrics[name] = score(apply_head(head, feats), labels)
            metrics = {"test": metrics}
        else:
            metrics = run_evaluation(rows, sets, batch_size=args.batch_size, num_workers=args.workers, progress=False)
        seconds = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {
        "path": args.path,
        "seconds": seconds,
        "cpu_seconds": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime),
        "top1": {k: v["top1"] for k, v in metrics["test"].items()},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "pixel_stats": pc.stats.to_json() if pc is not None else None,
    }
    print("RESULT " + json.dumps(out), flush=True)


def run_child(args, path: str, root: Path, features: Path, pixels: Path) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        path,
        "--root",
        str(root),
        "--features",
        str(features),
        "--pixels",
        str(pixels),
        "--workers",
        str(args.workers),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        raise SystemExit(f"{path} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return json.loads(line[-1][len("RESULT ") :])


def warm(args, root: Path, features: Path, pixels: Path) -> float:
    """Fill the feature cache (zero-shot) and the pixel cache, as a sweep's first run does; its seconds."""
    import torch

    torch.set_num_threads(args.threads)
    from fdalign.data import ImageDataset, open_dataset
    from fdalign.eval import EvalSet, featcache, pixelcache, run_evaluation

    backend, rows = build_models()
    ds = ImageDataset(open_dataset(str(root / "test"))["test"], backend.preprocess_eval())
    with featcache.enabled(features), pixelcache.enabled(pixels):
        t0 = time.perf_counter()
        run_evaluation(rows, {"test": EvalSet("test", ds)}, batch_size=args.batch_size, num_workers=args.workers,
                       progress=False)  # fmt: skip
        return time.perf_counter() - t0


def per_image(args, root: Path, k: int = 128) -> dict:
    """CPU milliseconds per image on the first ``k`` images: decoding + preprocessing as before (PIL, the whole
    transform), as now (simplejpeg where exact, uint8, then the normalisation), and one encoder's forward."""
    import torch

    torch.set_num_threads(args.threads)
    from fdalign.data import ImageDataset, open_dataset
    from fdalign.eval import pixelcache

    backend, rows = build_models()
    ds = ImageDataset(open_dataset(str(root / "test"))["test"], backend.preprocess_eval())
    parts = pixelcache.split_transform(ds.transform)
    t0 = time.process_time()
    x = torch.stack([ds[i][0] for i in range(k)])
    t1 = time.process_time()
    pixels = torch.stack([pixelcache.PixelDataset(ds, parts)[i][0] for i in range(k)])
    y = pixelcache.normalise(pixels, parts)
    t2 = time.process_time()
    enc = rows["fine-tuned"][0].eval()
    with torch.no_grad():
        enc(x)  # warm-up
        t3 = time.process_time()
        enc(x)
        t4 = time.process_time()
    assert torch.equal(x, y), "the pixel path differs from the transform"
    return {"decode_before": 1e3 * (t1 - t0) / k, "decode_now": 1e3 * (t2 - t1) / k, "encoder": 1e3 * (t4 - t3) / k}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sizes", nargs="*", type=int, default=[1000, 5000], help="test images per size")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: decode in the main process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2, help="runs of each path, interleaved; the best is kept")
    p.add_argument("--dir", default=None, help="where the JPEG worlds and caches go (default: a temp folder)")
    p.add_argument("--child", default=None, choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--pixels", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.path = args.child
        child(args)
        return 0
    base = Path(args.dir or tempfile.mkdtemp(prefix="fdalign-bench-evalscale-"))
    print(
        f"eval_scale: 5 models (zero-shot from the feature cache, fine-tuned, WiSE-FT {ALPHAS}), fdalign-world, "
        f"224 px JPEG, 1000 classes; workers {args.workers}, torch threads {args.threads}, batch {args.batch_size}; "
        f"{os.cpu_count()} CPUs (shared); in {base}",
        flush=True,
    )
    per_k = {}
    for n in args.sizes:
        root = base / f"n{n}"
        t0 = time.perf_counter()
        render_imagenet_shape(root, n)
        rendered = time.perf_counter() - t0
        jpeg_mb = sum(f.stat().st_size for f in (root / "test").rglob("*.JPEG")) / 1e6
        features, pixels = root / "cache" / "features", root / "cache" / "pixels"
        first = warm(args, root, features, pixels)
        cache_mb = sum(f.stat().st_size for f in pixels.rglob("*") if f.is_file()) / 1e6
        res: dict = {}
        for _ in range(args.repeats):  # interleaved, the best of each kept: the machine's load varies
            for path in PATHS:
                r = run_child(args, path, root, features, pixels)
                best = res.setdefault(path, r)
                best["seconds"] = min(best["seconds"], r["seconds"])
                best["cpu_seconds"] = min(best["cpu_seconds"], r["cpu_seconds"])
        old, old_cpu = res["old"]["seconds"], res["old"]["cpu_seconds"]
        print(
            f"\n{n} test images ({jpeg_mb:.0f} MB of JPEG, rendered in {rendered:.0f} s); "
            f"the sweep's first run (fills both caches): {first:.1f} s; pixel cache on disk {cache_mb:.0f} MB",
            flush=True,
        )
        print(
            f"  {'path':<12} {'wall s':>8} {'images/s':>9} {'speed-up':>9} {'CPU s':>8} {'speed-up (CPU)':>15} "
            f"{'peak RSS MB':>12}"
        )
        for path in PATHS:
            r = res[path]
            print(
                f"  {path:<12} {r['seconds']:8.1f} {n / r['seconds']:9.0f} {old / r['seconds']:8.2f}x "
                f"{r['cpu_seconds']:8.1f} {old_cpu / r['cpu_seconds']:14.2f}x {r['peak_rss_mb']:12.0f}"
            )
        same = all(res[path]["top1"] == res["old"]["top1"] for path in PATHS)
        print(f"  top-1 identical on every path: {same}")
        c = per_image(args, root)
        ceiling = (4 * c["decode_before"] + 4 * c["encoder"]) / (4 * c["encoder"])
        print(
            f"  per image: decode + preprocess {c['decode_before']:.2f} ms before (PIL), {c['decode_now']:.2f} ms now "
            f"(simplejpeg where exact, bitwise equal); one encoder {c['encoder']:.2f} ms: with 4 encoders to run, "
            f"no decoding at all can give at most {ceiling:.2f}x over the old path"
        )
        per_k[n] = {path: 1000 * res[path]["cpu_seconds"] / n for path in PATHS}
    print("\nCPU seconds per 1000 images (constant across sizes = linear growth):")
    for n, row in per_k.items():
        print(f"  {n:>6}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
