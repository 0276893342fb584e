"""The GPU side of parallel sweeps, which CPU CI cannot run: the demo sweep (fewer seeds and epochs)
on CUDA in this process, then with two spawned workers pinned by CUDA_VISIBLE_DEVICES (``--devices``),
printing each run's worker, its visible devices and seconds, the feature-cache hits, and whether the
zero-shot rows of both sweeps agree.

    python benchmarks/sweep_gpu_check.py --out /tmp/sweep_gpu --devices 0,0
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--devices", default="0,0")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from fdalign.experiments import sweep as sw
    from fdalign.experiments.launchers import InProcess, LocalWorkers

    assert torch.cuda.is_available(), "needs a CUDA device"
    out = Path(args.out)
    cfg = sw.load_sweep_config("demo")
    cfg.seeds = cfg.seeds[: args.seeds]
    cfg.train = dict(cfg.train, epochs=args.epochs, device="cuda:0")
    world = sw.render_world_for(cfg, out, progress=False)
    cfg = dataclasses.replace(cfg, world=None)
    runs = sw.plan_runs(cfg)
    rows = {}
    for name, launcher in (
        ("in-process", InProcess()),
        ("2 workers", LocalWorkers(2, devices=args.devices.split(","), threads=4)),
    ):
        t0 = time.perf_counter()
        res = sw.run_sweep(cfg, out / name, data_root=str(world), progress=False, log=print, launcher=launcher)
        wall = time.perf_counter() - t0
        book = json.loads((out / name / "sweep.json").read_text())["cost"]
        print(f"== {name}: {wall:.1f} s wall, failed {res.failed}, cache {book['cache']}", flush=True)
        for r in runs:
            st = json.loads((r.dir(out / name) / "status.json").read_text())
            m = json.loads((r.dir(out / name) / "metrics.json").read_text())
            rows.setdefault(r.key, {})[name] = m["metrics"]
            print(
                f"   {r.key}: {st['state']} worker {st.get('worker')} CUDA_VISIBLE_DEVICES="
                f"{st.get('cuda_visible_devices')} device {m['config']['device']} {st.get('seconds')} s",
                flush=True,
            )
    same = all(
        v["in-process"][s]["zero-shot"] == v["2 workers"][s]["zero-shot"]
        for v in rows.values()
        for s in v["in-process"]
    )
    diff = max(
        abs(v["in-process"][s]["fine-tuned"]["top1"] - v["2 workers"][s]["fine-tuned"]["top1"])
        for v in rows.values()
        for s in v["in-process"]
    )
    print(f"zero-shot rows equal across the two sweeps: {same}; largest fine-tuned top-1 difference {diff:.2f} points")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
