"""The imagenet preset end to end on a synthetic ImageNet: prepare, train and evaluation times, evaluation
images per second, peak memory, pixel-cache use.

The data: ImageNet's layout (``imagenet/{train,val}/<wnid>/*.JPEG``, ``imagenetv2/<k>/``,
``imagenet-sketch/<wnid>/``, ``imagenet-a/<wnid>/`` and ``imagenet-r/<wnid>/`` on the A / R classes) filled
with world images rendered at 224 px and written as JPEG (a pool of renders, each file with its own noise).
Full size is 1000 classes x (16 shots + 4 val) in train/, 20 per class in val/ (20k), V2 10 per class,
Sketch 50, A and R 37 and 150 per class of theirs (~150k test and OOD images); ``--scale`` multiplies every
per-class count (at least 1) and ``--classes`` keeps fewer classes. The sweep is the imagenet preset with the
shipped model (``fdalign-world``: no download; ``--model ViT-B-32 --pretrained openai`` for the real one),
its methods cut to ``--methods`` and one seed, ``--epochs`` epochs, no cache heads unless ``--heads``.

    python benchmarks/imagenet_scale.py --classes 100 --scale 0.1 --epochs 1      # minutes on 2 cores
    python benchmarks/imagenet_scale.py --scale 1 --epochs 10 --lp-epochs 60 --device cuda   # full size (GPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

FULL = {"shots": 16, "train_val": 4, "val": 20, "v2": 10, "sketch": 50, "a": 37, "r": 150}


def prepare(root: Path, classes: int, scale: float, pool_per_class: int = 2) -> dict:
    """Write the synthetic ImageNet under ``root``; ``{set: images}``."""
    import numpy as np
    from PIL import Image

    from fdalign.data.imagenet import imagenet_subset_wnids, imagenet_wnids
    from fdalign.world.generator import CLASSES, render_one

    if (root / "prepared.json").is_file():
        return json.loads((root / "prepared.json").read_text())
    wnids = sorted(imagenet_wnids())
    step = max(1, len(wnids) // classes)
    chosen = wnids[::step][:classes]
    n = {k: max(1, round(v * scale)) for k, v in FULL.items()}
    n["shots"], n["train_val"] = FULL["shots"], FULL["train_val"]  # K = 16 and val 4 per class, as the preset
    rng = np.random.default_rng(0)
    pool = {
        (c, j): render_one(c, j % 3, np.random.default_rng(1000 * c + j), image_size=224)[0]
        for c in range(len(CLASSES))
        for j in range(pool_per_class)
    }
    counts: dict[str, int] = {}

    def write(folder: Path, k: int, per: int, what: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per):
            base = pool[(k % len(CLASSES), i % pool_per_class)]
            noisy = np.clip(base.astype(np.int16) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"{what}_{i:05d}.JPEG", quality=90)
        counts[what] = counts.get(what, 0) + per

    for k, w in enumerate(chosen):
        write(root / "imagenet" / "train" / w, k, n["shots"] + n["train_val"], "train")
        write(root / "imagenet" / "val" / w, k, n["val"], "val")
        write(root / "imagenetv2" / str(imagenet_wnids().index(w)), k, n["v2"], "v2")  # V2: folder = 1k index
        write(root / "imagenet-sketch" / w, k, n["sketch"], "sketch")
    for which in ("a", "r"):
        subset = [w for w in chosen if w in set(imagenet_subset_wnids(which))] or chosen[:3]
        for w in subset:
            write(root / f"imagenet-{which}" / w, chosen.index(w), n[which], which)
    (root / "prepared.json").write_text(json.dumps(counts))
    return counts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--scale", type=float, default=0.05, help="multiplies the per-class test / OOD counts")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lp-epochs", type=int, default=None, help="the linear-probe phase's epochs (default: --epochs)")
    p.add_argument("--methods", default="fd-align", help="comma list of the preset's methods to run")
    p.add_argument("--heads", action="store_true", help="also the preset's cache heads (tip, tip-f, ape, ape-t)")
    p.add_argument("--model", default="fdalign-world")
    p.add_argument("--pretrained", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the train option's)")
    p.add_argument("--dir", default=None, help="where the data and the sweep go (default: a temp folder)")
    args = p.parse_args(argv)

    import torch

    from fdalign.eval import pipeline
    from fdalign.experiments import sweep as sw

    base = Path(args.dir or tempfile.mkdtemp(prefix="fdalign-bench-imagenet-"))
    t0 = time.perf_counter()
    counts = prepare(base / "data", args.classes, args.scale)
    t_prepare = time.perf_counter() - t0
    cfg = sw.load_sweep_config("imagenet")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    lp_epochs = args.epochs if args.lp_epochs is None else args.lp_epochs  # the released recipe probes 60 epochs
    over = dict(
        model=args.model, pretrained=args.pretrained, epochs=args.epochs, lp_epochs=lp_epochs, device=args.device
    )
    over["precision"] = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.workers is not None:
        over["num_workers"] = args.workers
    cfg = dataclasses.replace(
        cfg,
        seeds=cfg.seeds[:1],
        methods={m: cfg.methods[m] for m in methods},
        heads=cfg.heads if args.heads else [],
        overrides=dict(cfg.overrides, **over),  # applied last: over the released settings and the methods
        wiseft=[m for m in (cfg.wiseft or []) if m in methods],
        reference=methods[0],
    )
    spent = {"seconds": 0.0, "images": 0}
    real = pipeline.encode_once

    def timed(encoders, dataset, *a, **kw):  # every evaluation pass (test, OOD, val), all encoders
        t = time.perf_counter()
        out = real(encoders, dataset, *a, **kw)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        spent["seconds"] += time.perf_counter() - t
        spent["images"] += len(dataset)
        return out

    pipeline.encode_once = timed
    print(
        f"imagenet_scale: {args.classes} classes, scale {args.scale}: {counts}; prepared in {t_prepare:.0f} s; "
        f"model {args.model}, device {args.device}, methods {methods}, {args.epochs} epoch(s), heads "
        f"{cfg.heads or 'none'}",
        flush=True,
    )
    t1 = time.perf_counter()
    res = sw.run_sweep(cfg, base / "sweep", data_root=str(base / "data"), progress=False, log=print)
    wall = time.perf_counter() - t1
    pipeline.encode_once = real
    trained = 0.0
    for r in res.runs:
        m = base / "sweep" / r["dir"] / "metrics.json"
        if m.is_file():
            trained += float(json.loads(m.read_text())["train"]["seconds"])
    pixels = res.cost.get("pixel_cache") or {}
    print(f"runs: {[(r['key'], r['state']) for r in res.runs]}")
    print(
        f"prepare {t_prepare:.0f} s; sweep {wall:.0f} s: train {trained:.0f} s, evaluation {spent['seconds']:.0f} s "
        f"({spent['images']} set images over the passes, {spent['images'] / max(spent['seconds'], 1e-9):.0f} "
        f"images/s), the rest (models, prototypes, reports) {wall - trained - spent['seconds']:.0f} s"
    )
    print(
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        + (f", peak GPU {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if torch.cuda.is_available() else "")
    )
    print(
        f"pixel cache: {pixels.get('hits', 0)} hits, {pixels.get('misses', 0)} misses, "
        f"{pixels.get('bytes_written', 0) / 1e6:.0f} MB written"
    )
    return 0 if res.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
