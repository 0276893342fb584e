"""One-pass prompt encoding vs the naive two-pass loop, side by side in one run.

The naive way computes class prototypes class by class (encode that class's M prompts) and then
spurious prototypes template by template (encode that template's C prompts): 2*C*M encodings in
C+M small calls. fdalign encodes the C*M prompts once in full batches and takes both means of the
one [C, M, D] tensor. Both must give the same prototypes; this script checks that and prints the
median time of each over a few repeats, plus a warm-cache call.

    python benchmarks/prototypes.py [--classes 50] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fdalign.backends import load_clip
from fdalign.prompts import format_prompts, load_templates
from fdalign.prototypes import class_prototypes, encode_prompt_features, spurious_prototypes


def small_clip_config(width: int, layers: int, context: int) -> dict:
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {
            "context_length": context,
            "vocab_size": 49408,
            "width": width,
            "heads": width // 64,
            "layers": layers,
        },
    }


def naive_two_pass(backend, classnames, templates, batch_size):
    cls = []
    for name in classnames:
        f = F.normalize(backend.encode_text(format_prompts([name], templates), batch_size=batch_size), dim=-1)
        cls.append(F.normalize(f.mean(0), dim=-1))
    spur = []
    for t in templates:
        f = F.normalize(backend.encode_text(format_prompts(classnames, [t]), batch_size=batch_size), dim=-1)
        spur.append(F.normalize(f.mean(0), dim=-1))
    return torch.stack(cls), torch.stack(spur)


def one_pass(backend, classnames, templates, batch_size, cache_dir=False):
    feats = encode_prompt_features(
        backend, classnames, templates, batch_size=batch_size, progress=False, cache_dir=cache_dir
    )
    return class_prototypes(feats), spurious_prototypes(feats)


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--templates", default="openai80")
    ap.add_argument("--width", type=int, default=128, help="text-tower width of the random model")
    ap.add_argument("--layers", type=int, default=2, help="text-tower depth of the random model")
    ap.add_argument("--context", type=int, default=32, help="text context length (prompts here are < 32 tokens)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    templates = load_templates(args.templates)
    classnames = [f"class number {i}" for i in range(args.classes)]
    c, m = len(classnames), len(templates)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench-clip.json"
        cfg.write_text(json.dumps(small_clip_config(args.width, args.layers, args.context)))
        torch.manual_seed(0)
        backend = load_clip("bench-clip", pretrained="random", model_config=str(cfg))
        backend.encode_text(templates[:8])  # warm-up: first-call allocations and tokenizer init

        t_one, (cls1, spur1) = timed(lambda: one_pass(backend, classnames, templates, args.batch_size), args.repeats)
        t_naive, (cls2, spur2) = timed(
            lambda: naive_two_pass(backend, classnames, templates, args.batch_size), args.repeats
        )
        cache = Path(tmp) / "cache"
        one_pass(backend, classnames, templates, args.batch_size, cache_dir=cache)  # fill the cache
        t_cached, (cls3, spur3) = timed(
            lambda: one_pass(backend, classnames, templates, args.batch_size, cache), args.repeats
        )

    torch.testing.assert_close(cls1, cls2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(spur1, spur2, rtol=1e-5, atol=1e-6)
    assert torch.equal(cls1, cls3) and torch.equal(spur1, spur3)
    print(
        f"C={c} classes x M={m} templates ({args.templates}), D={cls1.shape[1]}, text tower width {args.width} "
        f"x {args.layers} layers, context {args.context}, {args.threads} threads, median of {args.repeats}"
    )
    print(f"  naive two-pass  : {2 * c * m:5d} encodings in {c + m:3d} calls  {t_naive:8.3f} s")
    print(f"  one pass        : {c * m:5d} encodings in   1 call   {t_one:8.3f} s")
    print(f"  one pass, cached:     0 encodings             {t_cached:8.3f} s")
    print(f"  speed-up one-pass vs naive: {t_naive / t_one:.2f}x   cached vs naive: {t_naive / t_cached:.0f}x")
    print("  prototypes identical (allclose rtol 1e-5, atol 1e-6): yes")


if __name__ == "__main__":
    main()
