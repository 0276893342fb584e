"""The GPU paths that CPU CI cannot run, exercised side by side in one run.

Renders a small world task, then trains the shipped ``fdalign-world`` CLIP on it with each CUDA
setting (fp32, bf16 and fp16 autocast with the grad scaler, gradient checkpointing, a bf16 vs fp32 f0,
and NCCL through torchrun) and prints one row per setting: wall time relative to fp32, the last logged
losses, and ID / OOD accuracy of the selected model. Every loss must be finite and the low-precision
rows should land within a few points of fp32 (same seed, same views).

    python benchmarks/gpu_check.py --out /tmp/gpu_check           # needs a CUDA device
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = {
    "fp32": ["--precision", "fp32", "--f0-precision", "fp32"],
    "fp32, f0 bf16 (auto)": ["--precision", "fp32", "--f0-precision", "auto"],
    "bf16 autocast": ["--precision", "bf16"],
    "fp16 autocast + scaler": ["--precision", "fp16"],
    "bf16 + grad checkpointing": ["--precision", "bf16", "--grad-checkpointing"],
}


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t0


def summarise(out: Path) -> dict:
    rows = list(csv.DictReader(open(out / "log.csv")))
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [float(r["loss"]) for r in rows]
    return {
        "steps": len(rows),
        "last_loss": losses[-1],
        "finite": all(math.isfinite(v) for v in losses),
        "kl": float(rows[-1].get("kl", "nan")),
        "top1": {
            split: round(m["fine-tuned"]["top1"], 1) for split, m in metrics["metrics"].items() if "fine-tuned" in m
        },
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/gpu_check")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--cpu-smoke", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    out = Path(args.out)
    world = out / "world"
    fd = [sys.executable, "-m", "fdalign"]
    run(
        fd
        + [
            "world",
            "render",
            "--out",
            str(world),
            "--id-styles",
            "jpeg corrupted",
            "--ood-styles",
            "sketch",
            "--test-per-class",
            "8",
            "--no-progress",
        ]
    )
    common = [
        "train",
        "--model",
        "fdalign-world",
        "--data",
        str(world),
        "--ood",
        f"sketch={world}/ood/sketch",
        "--shots",
        str(args.shots),
        "--epochs",
        str(args.epochs),
        "--beta",
        "20",
        "--device",
        "cuda",
        "--no-progress",
        "--seed",
        "1",
    ]
    if args.cpu_smoke:  # check this script itself without a GPU
        common[common.index("cuda")] = "cpu"
    results = {}
    for name, extra in SETTINGS.items():
        d = out / name.replace(" ", "_").replace(",", "").replace("+", "").replace("(", "").replace(")", "")
        results[name] = (run(fd + common + extra + ["--out", str(d)]), summarise(d))
    d = out / "torchrun_nccl"
    results["torchrun nccl (1 proc)"] = (
        run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "fdalign"]
            + common
            + ["--precision", "bf16", "--out", str(d)]
        ),
        summarise(d),
    )
    base = results["fp32"][0]
    print(
        f"{'setting':28s} {'time/fp32':>9s} {'steps':>5s} {'finite':>6s} {'last loss':>9s} {'last kl':>8s}  "
        "fine-tuned top-1 per split"
    )
    for name, (sec, s) in results.items():
        print(
            f"{name:28s} {sec / base:9.2f} {s['steps']:5d} {str(s['finite']):>6s} {s['last_loss']:9.4f} "
            f"{s['kl']:8.4f}  {s['top1']}"
        )


if __name__ == "__main__":
    main()
