"""``fdalign sweep``: run a grid of training runs (data sets x shots x seeds x methods), resumably."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run every cell of a sweep config (a YAML file or a shipped preset) as one `fdalign train` run in
OUT/runs/<data set>/k<shots>/s<seed>/<method>/. Run the same command again to continue: finished
runs are skipped, a killed run resumes from its checkpoint, a failed run is retried (a failure is
recorded in its status.json and train.log and the sweep goes on). OUT/sweep.json lists every run.
Zero-shot CLIP and WiSE-FT need no runs of their own: every train run evaluates them. Then
`fdalign report OUT` makes the tables and plots.

Presets (src/fdalign/experiments/presets/):
  demo          the embedded world, rendered into OUT/world: zero-shot vs fine-tune vs FD-Align vs WiSE-FT
  imagenet      ImageNet 16-shot -> V2 / Sketch / A / R, ViT-B/32, released settings (needs --data-root)
  coop          the 11 CoOp data sets x 1/2/4/8/16 shots x 3 seeds, authors' per-data-set LRs (needs --data-root)
  spc-ablation  the 11 data sets: 80 OpenAI templates vs Tip's 7 vs SPC (needs --data-root)
  base2novel    the 11 CoOp data sets, base / novel classes, ViT-B/16, 3 seeds (needs --data-root)
  cross-dataset ImageNet 16-shot -> the other 10 CoOp data sets with their own classes (needs --data-root)
  base2novel-world, cross-dataset-world   both protocols on the embedded world, offline

examples:
  fdalign sweep demo --out sweeps/demo && fdalign report sweeps/demo
  fdalign sweep coop --data-root /data/coop --out sweeps/coop
  fdalign sweep my_grid.yaml --out sweeps/mine --dry-run
  fdalign sweep coop --data-root /data/coop --out sweeps/coop --workers 4 --devices 0,1,2,3
  fdalign sweep coop --data-root /data/coop --out sweeps/coop --launcher slurm --partition gpu --time 120

Two sweep processes (or Slurm tasks) may share OUT: each cell is claimed through its run directory's
lock (.fdalign.lock, owner host + pid), so no cell runs twice; a lock left by a dead process is
taken over, and that is said.
"""


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter

    p = subparsers.add_parser(
        "sweep",
        help="run a grid of training runs (data sets x shots x seeds x methods), resumable",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("config", metavar="CONFIG", help="sweep config YAML, or a preset name: " + ", ".join(_presets()))
    p.add_argument("--out", required=True, help="sweep folder (created; an existing one is continued)")
    p.add_argument(
        "--data-root",
        default=None,
        help="fills {data_root} in the config's data paths; if not given: the "
        "config's data_root, or OUT/world when the config renders the world",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs and their state, checking the options and "
        "the runs on disk as the real run does (exit 2 where it would stop); train nothing",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="PATTERN",
        help="run only the cells whose key (data set/kSHOTS/sSEED/method) matches a shell pattern, "
        "e.g. 'imagenet/k16/s1/*': try the whole chain on a few cells before a long sweep",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="run only the first N cells (after --only)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a train option for every cell, over the config and its methods (VALUE as YAML), e.g. "
        "--set model=ViT-B-16, or a small model for a smoke run: --set model=NAME "
        "--set model_config=CFG.json --set pretrained=CKPT --set epochs=1; also the grid (--set shots=[1,4], "
        "--set seeds=[1]), a rendered world's size (--set world.train_per_class=8) and the cache heads "
        "(--set heads=[] or, without the authors' 10-view cache, --set heads_preset=null). Repeatable",
    )
    p.add_argument(
        "--shots", type=int, nargs="+", default=None, metavar="K", help="the grid's shots (default: the config's)"
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, metavar="S", help="the grid's seeds (default: the config's)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="training epochs of every run, as --set epochs=N (default: the config's)",
    )
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar over runs")
    p.add_argument(
        "--feature-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share the frozen encoder's features (zero-shot rows, the heads' cache) across the runs, "
        "in OUT/cache/features (default: the config's feature_cache, on)",
    )
    p.add_argument(
        "--pixel-cache",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="share the decoded evaluation images (uint8, resized and cropped) across the runs, in "
        "OUT/cache/pixels or $FDALIGN_PIXEL_CACHE (default: the config's pixel_cache, on)",
    )
    p.add_argument(
        "--pixel-cache-budget",
        type=float,
        default=None,
        metavar="GB",
        help="delete the least recently used pixel-cache entries beyond GB gigabytes (default: the "
        "config's pixel_cache_budget, none)",
    )
    g = p.add_argument_group("where the cells run")
    g.add_argument(
        "--launcher",
        choices=("local", "slurm", "submitit-local"),
        default="local",
        help="local: this machine (--workers processes); slurm: one Slurm array task per cell, via "
        "submitit (pip install 'fdalign[slurm]'); submitit-local: the Slurm path on this machine",
    )
    g.add_argument("--workers", type=int, default=1, help="cells run at a time, each in its own process (local)")
    g.add_argument(
        "--devices",
        default=None,
        help="GPUs to pin the workers to, e.g. 0,1,2,3 (worker i gets "
        "CUDA_VISIBLE_DEVICES=devices[i mod n]; default: every worker sees every GPU)",
    )
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--time", type=int, default=240, help="Slurm time limit per cell, in minutes")
    g.add_argument("--gpus-per-task", type=int, default=1, help="GPUs per cell (Slurm)")
    g.add_argument("--cpus-per-task", type=int, default=8, help="CPUs per cell (Slurm)")
    g.add_argument("--mem-gb", type=int, default=None, help="memory per cell in GB (Slurm)")
    g.add_argument("--array-parallelism", type=int, default=32, help="array tasks running at once (Slurm)")
    g.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra sbatch flag, repeatable: --sbatch account=proj --sbatch qos=high",
    )
    g.add_argument(
        "--no-wait",
        dest="wait",
        action="store_false",
        help="Slurm: submit and return (run the command again to collect and resubmit) (default: wait for the "
        "cells to finish)",
    )
    p.set_defaults(func=run)


def _presets() -> list[str]:
    """The shipped presets, read off the folder (the help lists every one, and loads no torch)."""
    from pathlib import Path

    return sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "experiments" / "presets").glob("*.yaml"))


def sweep_config(args: argparse.Namespace):
    """The config with the command line's changes: ``--set`` first, then ``--shots`` / ``--seeds`` / ``--epochs``."""
    from fdalign.experiments.sweep import apply_overrides, load_sweep_config, parse_overrides

    cfg = apply_overrides(load_sweep_config(args.config), parse_overrides(args.overrides))
    flags = {"shots": args.shots, "seeds": args.seeds, "epochs": args.epochs}
    return apply_overrides(cfg, {k: v for k, v in flags.items() if v is not None}, "the command line")


def make_launcher(args: argparse.Namespace, cfg, out: str):
    """The launcher the flags ask for (fdalign.experiments.launchers)."""
    from pathlib import Path

    from fdalign.experiments.launchers import InProcess, LocalWorkers, SlurmOptions, Submitit

    if args.launcher == "local":
        devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else []
        if args.workers == 1 and not devices:
            return InProcess()
        return LocalWorkers(args.workers, devices)  # checks the numbers and the devices
    opts = SlurmOptions(
        partition=args.partition,
        time=args.time,
        gpus_per_task=args.gpus_per_task,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        array_parallelism=args.array_parallelism,
        sbatch=list(args.sbatch),
    )
    opts.extra()  # a malformed --sbatch stops here
    return Submitit(
        str(Path(out) / "slurm"),
        opts,
        local=args.launcher == "submitit-local",
        wait=args.wait,
        name=f"fdalign-{cfg.name}",
    )


def run(args: argparse.Namespace) -> int:
    from fdalign.errors import FDAlignError
    from fdalign.experiments.sweep import preview, run_sweep

    cfg = sweep_config(args)
    launcher = make_launcher(args, cfg, args.out)
    if args.dry_run:
        rows = preview(cfg, args.out, data_root=args.data_root, only=args.only, limit=args.limit)
        for r, state, note in rows:
            print(f"{state:>11}  {r.key}" + (f"  ({note})" if note and state != "refused" else ""))
        print(f"{len(rows)} runs")
        refused = [note for _, state, note in rows if state == "refused"]
        if refused:
            raise FDAlignError(f"{len(refused)} run(s) would be refused by the real run; the first: {refused[0]}")
        if hasattr(launcher, "options"):  # what the Slurm launcher would submit
            todo = [r for r, state, _ in rows if state not in ("done", "damaged")]
            live = launcher.live([r.key for r in todo])
            todo = [r for r in todo if r.key not in live]
            if todo:
                print(f"would submit {len(todo)} array task(s), one per cell, logs in {launcher.folder}:")
                print("\n".join(launcher.options.sbatch_lines(len(todo), launcher.name)))
                for i, r in enumerate(todo):
                    print(f"  task {i}: {r.key}")
            else:
                print("nothing to submit")
        return 0
    res = run_sweep(
        cfg,
        args.out,
        data_root=args.data_root,
        progress=args.progress,
        launcher=launcher,
        feature_cache=args.feature_cache,
        only=args.only,
        limit=args.limit,
        pixel_cache=args.pixel_cache,
        pixel_cache_budget=args.pixel_cache_budget,
    )
    print(summary_line(cfg.name, res, args.out))
    pixels = res.cost.get("pixel_cache") or {}
    if pixels.get("hits") or pixels.get("misses"):
        print(
            f"pixel cache: {pixels['hits']} hits, {pixels['misses']} misses, {pixels.get('corrupt', 0)} damaged "
            f"entries recomputed, {pixels.get('bytes_read', 0) / 1e6:.0f} MB read, "
            f"{pixels.get('bytes_written', 0) / 1e6:.0f} MB written, {pixels.get('seconds_saved', 0):.0f} s of "
            "decoding saved"
        )
    return 1 if res.failed else 0


def summary_line(name: str, res, out) -> str:
    """The sweep's last line: runs, failures, time, what the feature cache did (damaged entries included:
    sweep.json records them, and a user should hear of them) and the report command."""
    cache = res.cost.get("cache", {})
    damaged = cache.get("corrupt", 0)
    return (
        f"sweep {name}: {len(res.runs)} runs, {res.executed} run now, {res.skipped} already done, "
        f"{res.failed} failed ({res.seconds:.0f} s); feature cache: {cache.get('hits', 0)} hits, "
        f"{cache.get('seconds_saved', 0):.0f} s saved"
        + (f", {damaged} damaged entr{'y' if damaged == 1 else 'ies'} recomputed" if damaged else "")
        + f"; report: fdalign report {out}"
    )
