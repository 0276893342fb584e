"""Cost of the demo sweep, measured side by side in one run: 1 worker vs 2 workers, with vs without the
feature cache, and how many zero-shot encoder passes each test / OOD set took (one per sweep, not one
per run, with the cache).

The demo sweep (``presets/demo.yaml``: fdalign-world, 8 shots, fine-tune and FD-Align) with fewer seeds
and epochs by default so that it fits a few minutes on 2 CPU cores; ``--seeds 5 --epochs 4`` is the
demo itself. The world is rendered once; every measurement starts from an empty sweep folder and an
empty prompt cache.

    python benchmarks/sweep.py                       # 2 seeds x 2 methods, 2 epochs
    python benchmarks/sweep.py --seeds 5 --epochs 4  # the whole demo (about 3 x 4 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=2, help="seeds of the demo grid (the demo: 5)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per run (the demo: 4)")
    p.add_argument("--cores", type=int, default=2, help="CPU cores shared out: 1 worker gets all, 2 get half each")
    p.add_argument("--heads", default="", help="also fit these cache heads on every run, e.g. tip,ape")
    args = p.parse_args(argv)

    import torch

    from fdalign.eval import featcache
    from fdalign.eval import features as F
    from fdalign.experiments import sweep as sw
    from fdalign.experiments.launchers import InProcess, LocalWorkers

    cfg = sw.load_sweep_config("demo")
    cfg.seeds = cfg.seeds[: args.seeds]
    cfg.train = dict(cfg.train, epochs=args.epochs, device="cpu")
    cfg.heads = [h for h in args.heads.split(",") if h]
    tmp = Path(tempfile.mkdtemp(prefix="fdalign-bench-sweep-"))
    world = sw.render_world_for(cfg, tmp, progress=False)
    cfg = dataclasses.replace(cfg, world=None)
    n_runs = len(sw.plan_runs(cfg))
    print(
        f"demo sweep: {n_runs} runs ({len(cfg.seeds)} seeds x {len(cfg.methods)} methods, {args.epochs} epochs, "
        f"heads: {cfg.heads or 'none'}), {args.cores} CPU cores, world in {world}",
        flush=True,
    )

    passes: dict[str, int] = {}
    original = F.extract_features

    def counting(encoder, dataset, *a, **kw):  # the pretrained encoder's passes, per evaluated set
        if featcache.is_frozen(encoder):
            name = dataset.split.name
            passes[name] = passes.get(name, 0) + 1
        return original(encoder, dataset, *a, **kw)

    def measure(name: str, launcher, cache: bool) -> tuple[float, dict, dict]:
        out = tmp / name
        os.environ["FDALIGN_CACHE"] = str(out / "prompt-cache")  # every measurement encodes its prompts afresh
        passes.clear()
        F.extract_features = counting
        t0 = time.perf_counter()
        try:
            res = sw.run_sweep(
                cfg,
                out,
                data_root=str(world),
                progress=False,
                log=lambda m: None,
                launcher=launcher,
                feature_cache=cache,
            )
        finally:
            F.extract_features = original
        wall = time.perf_counter() - t0
        if res.failed:
            bad = [r for r in res.runs if r["state"] != "done"]
            sys.exit(f"{name}: {len(bad)} run(s) failed, e.g. {bad[0]}")
        cost = json.loads((out / "sweep.json").read_text())["cost"]
        print(
            f"  {name:<22} {wall:7.1f} s wall; busy per worker: "
            + ", ".join(f"{v:.0f} s" for v in cost["busy_seconds"].values())
            + f"; cache hits {cost['cache']['hits']}, saved {cost['cache']['seconds_saved']:.1f} s",
            flush=True,
        )
        counted = dict(passes) if passes else dict(cost["cache"].get("passes") or {})
        return wall, counted, cost

    torch.set_num_threads(args.cores)
    one, passes_cache, _ = measure("1 worker, cache", InProcess(), True)
    two, passes_two, _ = measure("2 workers, cache", LocalWorkers(2, threads=max(1, args.cores // 2)), True)
    torch.set_num_threads(args.cores)
    nocache, passes_nocache, _ = measure("1 worker, no cache", InProcess(), False)

    sets = ["test"] + [o.split("=")[0] for o in sw.run_config(cfg, sw.plan_runs(cfg)[0], tmp, str(world)).ood]
    print()
    for what, a, b in (("1 worker / 2 workers (cache on)", one, two), ("no cache / cache (1 worker)", nocache, one)):
        print(f"wall time, {what + ':':<33} {a / b:.2f}x  ({a:.0f} s vs {b:.0f} s)")
    print(f"zero-shot encoder passes per set over the whole sweep of {n_runs} runs:")
    counts = {"cache": passes_cache, "2 workers + cache": passes_two, "no cache": passes_nocache}
    for s in sets:
        print(f"  {s:<18} " + "   ".join(f"{k}: {v.get(s, 0)}" for k, v in counts.items()))
    print(f"(sweep folders kept in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
