"""Cache heads on shared features vs recomputing the features for every head, side by side in one run.

`fdalign eval --heads zeroshot,tip,tip-f,ape,ape-t` encodes the cache, val, test (and OOD) images
once per encoder and fits / evaluates all five heads from those features. The naive way runs one
evaluation per head, encoding every split again each time. Both must give the same accuracies; this
script checks that and prints the wall time and evaluation throughput (test images x heads per
second) of each, and their ratio.

    python benchmarks/heads.py [--classes 10] [--shots 8] [--test 40] [--width 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fdalign.backends import load_clip
from fdalign.data import ImageDataset, open_dataset
from fdalign.eval import EvalSet
from fdalign.eval.heads import HEAD_NAMES, CacheData, HeadsConfig, evaluate_heads
from fdalign.heads.ape import APEConfig
from fdalign.heads.cache import FitConfig
from fdalign.heads.tip import TipConfig
from fdalign.prompts import load_templates
from fdalign.prototypes import build_prototypes


def clip_config(width: int, image: int) -> dict:
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": image, "layers": 4, "width": width, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    }


def write_folders(root: Path, classes: int, per_split: dict, size: int) -> None:
    """root/<split>/class_<c>/<i>.png: a class colour plus noise."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, size=(classes, 3))
    for split, n in per_split.items():
        for c in range(classes):
            d = root / split / f"class_{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = np.clip(colours[c] + rng.normal(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr, "RGB").save(d / f"{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--shots", type=int, default=8, help="cache images per class")
    ap.add_argument("--test", type=int, default=40, help="test images per class")
    ap.add_argument("--width", type=int, default=128, help="vision transformer width of the stand-in CLIP")
    ap.add_argument("--image", type=int, default=64, help="image size")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=5, help="Tip-F / APE-T epochs (the papers: 20)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import json

    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "m.json").write_text(json.dumps(clip_config(args.width, args.image)))
        torch.save({"state_dict": open_clip.CLIP(**clip_config(args.width, args.image)).state_dict()}, tmp / "m.pt")
        backend = load_clip("bench", pretrained=str(tmp / "m.pt"), model_config=str(tmp / "m.json"))
        write_folders(tmp / "data", args.classes, {"train": args.shots, "val": 4, "test": args.test}, args.image)
        splits = open_dataset(str(tmp / "data"))
        tf = backend.preprocess_eval()
        data = CacheData(ImageDataset(splits["train"], tf), ImageDataset(splits["val"], tf), "val (4/class)")
        sets = {"test": EvalSet("test", ImageDataset(splits["test"], tf))}
        protos = build_prototypes(
            backend, splits["train"].classnames, load_templates("tip7"), cache_dir=False, spc=None, progress=False
        ).class_prototypes
        fit = FitConfig(epochs=args.epochs)
        cfg = HeadsConfig(tip=TipConfig("0.1:3:10", "0.1:7:20", fit), ape=APEConfig(fit=fit, alpha="0.1:3:5"))
        enc = backend.image_encoder
        heads = list(HEAD_NAMES)
        n_images = len(sets["test"].dataset) + len(data.train) + len(data.val)

        def shared():
            return evaluate_heads({"": enc}, heads, protos, backend.logit_scale, data, sets, cfg)[0]

        def per_head():
            out = {s: {} for s in sets}
            for h in heads:
                m = evaluate_heads({"": enc}, [h], protos, backend.logit_scale, data, sets, cfg)[0]
                for s in sets:
                    out[s].update(m[s])
            return out

        shared()  # warm-up: first-call allocations and lazy imports
        t0 = time.perf_counter()
        a = shared()
        t_shared = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = per_head()
        t_naive = time.perf_counter() - t0

    same = all(a["test"][r]["top1"] == b["test"][r]["top1"] for r in a["test"])
    n_test = len(sets["test"].dataset)
    print(
        f"{args.classes} classes, cache {args.classes * args.shots}, val {args.classes * 4}, test {n_test} images "
        f"({n_images} encoded per pass); ViT width {args.width}, {args.image}px; {args.threads} thread(s); "
        f"heads: {', '.join(heads)}"
    )
    print(f"same accuracies both ways: {same}  " + ", ".join(f"{r} {v['top1']:.1f}" for r, v in a["test"].items()))
    print(f"{'':32s}{'seconds':>10s}{'test images x heads / s':>26s}")
    print(f"{'shared features (fdalign)':32s}{t_shared:10.2f}{n_test * len(heads) / t_shared:26.1f}")
    print(f"{'features recomputed per head':32s}{t_naive:10.2f}{n_test * len(heads) / t_naive:26.1f}")
    print(f"speed-up: {t_naive / t_shared:.2f}x")


if __name__ == "__main__":
    main()
