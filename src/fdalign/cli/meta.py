"""``fdalign meta-train`` and ``fdalign meta-eval``: the paper's N-way K-shot protocol."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fdalign.cli import HelpFormatter, add_encoding_arguments

TRAIN_DESCRIPTION = """\
Fine-tune a CLIP image encoder with FD-Align on N-way K-shot episodes of the base classes
(ProtoNet head: cosine to the mean support feature, learned scale), CE over the queries plus
beta x the spurious KL on every episode image; spurious prototypes come from the base class names
(with SPC). The epoch is chosen on episodes of the val classes. Afterwards the novel classes and
every --target are tested (5-way 1-shot and 5-shot, 2000 episodes, mean ± 95% interval), the
fine-tuned encoder beside zero-shot CLIP.

The run directory (--out) holds config.yaml, hashes.json, log.csv, checkpoint/last.*,
model/best.safetensors, selection.json, metrics.json and report.md (as `fdalign train`).

example:
  fdalign meta-train --model ViT-B-32 --pretrained openai --data /data/miniImageNet \\
      --classnames miniimagenet_names.txt --target cub=/data/CUB --out runs/mini-meta
"""

EVAL_DESCRIPTION = """\
N-way K-shot evaluation: mean query accuracy over --episodes episodes with a 95% interval
(1.96·std/√episodes), per target and setting, for each head (proto: mean support feature;
text: zero-shot prototypes of the episode's class names; combined: both). Features are computed
once per image; episodes are drawn on indices from --seed, the same on every machine.

RUN_OR_MODEL is a run of `fdalign meta-train` (or `fdalign train`): the fine-tuned encoder and
zero-shot CLIP side by side, written to RUN/episodes/ unless --out. Or a CLIP model name:
zero-shot CLIP only.

Targets: the novel split of --data (train.csv/val.csv/test.csv or base/ val/ novel/) and each
--target NAME=PATH, any data set used whole (ImageFolder, CSV, CoOp JSON).

example:
  fdalign meta-eval runs/mini-meta --target cub=/data/CUB --target cars=/data/StanfordCars \\
      --target places=/data/Places --target plantae=/data/Plantae
"""


def register(subparsers) -> None:
    from fdalign.train.config import add_config_arguments
    from fdalign.train.meta import MetaConfig

    t = subparsers.add_parser("meta-train", help="FD-Align on N-way K-shot episodes of base classes, then test "
                              "novel / cross-domain episodes", description=TRAIN_DESCRIPTION, formatter_class=HelpFormatter)
    t.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML file of options; flags override it")
    add_config_arguments(t, MetaConfig)
    t.set_defaults(func=run_train)

    e = subparsers.add_parser("meta-eval", help="N-way K-shot episode accuracy with 95%% intervals (novel classes, "
                              "cross-domain targets)", description=EVAL_DESCRIPTION, formatter_class=HelpFormatter)
    e.add_argument("target_model", metavar="RUN_OR_MODEL", help="run directory, or CLIP model name")
    e.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path (model name only)")
    e.add_argument("--model-config", default=None, help="open_clip model-config JSON (model name only)")
    e.add_argument("--data", default=None, help="class splits whose novel split is tested (for a run: default the "
                   "run's --data; 'none' to test only --target sets)")
    e.add_argument("--image-root", default=None, help="folder of the images of CSV split files")
    e.add_argument("--classnames", default=None, help="class-names file for --data ('<wnid> <name>' lines)")
    e.add_argument("--target", action="append", default=[], metavar="NAME=PATH",
                   help="a cross-domain data set used whole; repeat for several")
    _add_episode_options(e)
    e.add_argument("--no-zeroshot", action="store_true", help="for a run: skip zero-shot CLIP")
    e.add_argument("--out", default=None, help="output folder (default: RUN/episodes for a run, none for a model)")
    e.set_defaults(func=run_eval)


def _add_episode_options(p) -> None:
    from fdalign.data.episodes import ON_SMALL
    from fdalign.heads.episodes import EPISODE_HEADS

    p.add_argument("--episodes", type=int, default=2000, help="episodes per setting (per run)")
    p.add_argument("--ways", type=int, default=5, help="N: classes per episode")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="K: support images per class, one setting each")
    p.add_argument("--queries", type=int, default=15, help="Q: query images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes")
    p.add_argument("--heads", nargs="+", default=list(EPISODE_HEADS), choices=EPISODE_HEADS, help="heads to score")
    p.add_argument("--runs", type=int, default=1, help="repeat with new episodes; > 1 also reports the authors' "
                   "interval 1.96·std of the run means (they used 5)")
    p.add_argument("--on-small", default="skip", choices=ON_SMALL,
                   help="classes with fewer than K+Q images: skip (counted in the report) or error")
    p.add_argument("--weight", type=float, default=0.5, help="weight of the text head in the combined head")
    p.add_argument("--templates", default="openai80", help="prompt templates of the text head")
    add_encoding_arguments(p, batch_size=256)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the prompt-feature cache")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")


# ------------------------------------------------------------------------------------------------


def _config(args):
    import dataclasses

    from fdalign.train.meta import MetaConfig

    explicit = {f.name: getattr(args, f.name) for f in dataclasses.fields(MetaConfig) if hasattr(args, f.name)}
    cfg = MetaConfig.from_yaml(args.config) if args.config else MetaConfig()
    d = cfg.to_dict()
    d.update(explicit)
    return MetaConfig.from_dict(d, source="the command line").validate()


def _parse_targets(specs: list[str]) -> list[tuple[str, str]]:
    from fdalign.data.ood import parse_ood_arg
    from fdalign.errors import FDAlignError

    out = []
    for s in specs:
        name, path = parse_ood_arg(s)
        if name in {n for n, _ in out} or name == "novel":
            raise FDAlignError(f"--target name {name!r} is used twice (or is 'novel', the --data novel split)")
        out.append((name, path))
    return out


def _test_splits(splits: dict, targets: list[tuple[str, str]], settings) -> list[tuple[str, object]]:
    """The novel split (if any) then each --target, read and checked against every test setting."""
    from fdalign.data.episodes import class_pool, load_target

    named = ([("novel", splits["novel"])] if "novel" in splits else [])
    named += [(name, load_target(path, name=name)) for name, path in targets]
    for _, split in named:
        for spec in settings.specs:
            class_pool(split, spec, settings.on_small)  # too few classes / images: fail before any encoding
    return named


def _with_prototypes(backend, named, templates, no_cache: bool, progress: bool):
    """EpisodeTargets with the text prototypes of their classes (for the text / combined heads)."""
    from fdalign.eval.episodes import EpisodeTarget
    from fdalign.prototypes import build_prototypes

    out = []
    for name, split in named:
        protos = build_prototypes(backend, split.classnames, templates, spc=None,
                                  cache_dir=False if no_cache else None, progress=progress or None)
        out.append(EpisodeTarget(name, split, protos.class_prototypes))
    return out


def _settings(*, episodes, ways, shots, queries, seed=0, heads=None, runs=1, on_small="skip", weight=0.5):
    from fdalign.data.episodes import EpisodeSpec
    from fdalign.errors import FDAlignError
    from fdalign.eval.episodes import EpisodeEvalSettings

    if episodes < 1 or runs < 1:
        raise FDAlignError("--episodes and --runs must be >= 1")
    if not 0 <= weight <= 1:
        raise FDAlignError(f"--weight must be in [0, 1] (got {weight})")
    s = EpisodeEvalSettings(specs=[EpisodeSpec(ways, k, queries) for k in shots], episodes=episodes, seed=seed,
                            runs=runs, on_small=on_small, weight=weight)
    if heads:
        s.heads = tuple(heads)
    return s


def _hashes(targets) -> dict:
    from fdalign.data import split_hash

    return {t.name: split_hash(t.split, content=False) for t in targets}


# ------------------------------------------------------------------------------------------------


def run_train(args: argparse.Namespace) -> int:
    from fdalign.errors import FDAlignError

    from fdalign.cli import check_run_request

    cfg = _config(args)
    check_run_request(cfg)
    out = Path(cfg.out)

    from fdalign.data import split_hash
    from fdalign.data.episodes import class_pool, load_class_splits
    from fdalign.prompts import load_templates

    templates = load_templates(cfg.templates)
    splits = load_class_splits(cfg.data, cfg.image_root, cfg.classnames)
    for role in ("base", "val"):
        if role not in splits:
            raise FDAlignError(f"--data {cfg.data} has no {role} classes (found: {', '.join(splits)}); meta-training "
                               "needs train.csv + val.csv or base/ + val/")
    for role in ("base", "val"):
        class_pool(splits[role], cfg.spec, cfg.on_small)  # too few classes or images: fail before loading a model
    settings = _settings(episodes=max(cfg.test_episodes, 1), ways=cfg.n_way, shots=cfg.test_shots,
                         queries=cfg.q_query, on_small=cfg.on_small)
    tests = _test_splits(splits, _parse_targets(cfg.target), settings) if cfg.test_episodes else []
    hashes = {role: split_hash(s, content=False) for role, s in splits.items()}
    _check_resume_hashes(out, hashes, cfg.resume)

    from fdalign.backends import load_clip
    from fdalign.io import atomic_write_json
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.meta import meta_train, zeroshot_copy

    progress = cfg.progress and sys.stderr.isatty()
    backend = load_clip(cfg.model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
    spc = SPCConfig(keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.spc_seed, renormalize=cfg.spc_renormalize) if cfg.spc else None
    protos = build_prototypes(backend, splits["base"].classnames, templates, spc=spc, progress=progress or None)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    atomic_write_json(out / "hashes.json", hashes)
    print(f"meta-training {backend.name} on {cfg.spec.name} episodes of {splits['base'].num_classes} base classes "
          f"({cfg.epochs} x {cfg.episodes_per_epoch} episodes); run directory {out}", file=sys.stderr)
    result = meta_train(backend, splits["base"], splits["val"], protos.loss_prototypes, cfg, out,
                        protos.class_prototypes, progress=progress)
    print(f"best epoch {result.best_epoch} (val {cfg.spec.name} accuracy {result.best_val:.2f}%)")
    if not tests:
        print("no test episodes (--test-episodes 0, or no novel split and no --target)", file=sys.stderr)
        return 0
    tests = _with_prototypes(backend, tests, templates, no_cache=False, progress=progress)
    zs = zeroshot_copy(result.encoder, result.zeroshot_encoder_state)
    models = {"fine-tuned": (result.encoder, result.proto_scale), "zero-shot": (zs, 10.0)}
    selection = {"epoch": _selection_line(result.selection.to_json().get("epoch", {})),
                 "test sets": "only evaluated, never used to select anything"}
    return _evaluate_and_write(models, tests, settings, backend, cfg.eval_batch_size, cfg.num_workers, cfg.device,
                               cfg.precision, progress, out, selection,
                               title=f"FD-Align meta-training: {backend.name} on {Path(cfg.data).name}",
                               extra={"config": cfg.to_dict(), "train": {"best_epoch": result.best_epoch,
                                      "val_acc_per_epoch": result.val_acc, "steps": result.steps,
                                      "seconds": round(result.seconds, 1), "proto_scale": result.proto_scale}})


def _check_resume_hashes(out: Path, hashes: dict, resume: bool) -> None:
    import json

    from fdalign.errors import FDAlignError

    if resume and (out / "hashes.json").is_file():
        old = json.loads((out / "hashes.json").read_text(encoding="utf-8"))
        for k in ("base", "val"):
            if old.get(k) not in (None, hashes.get(k)):
                raise FDAlignError(f"cannot resume {out}: its {k} classes' images differ from the ones listed now")


def _selection_line(entry: dict) -> str:
    if not entry:
        return "nothing selected"
    return f"epoch {entry.get('chosen')}, chosen on {entry.get('on')} by {entry.get('metric')} = {entry.get('score'):.2f}"


def _evaluate_and_write(models, tests, settings, backend, batch_size, num_workers, device, precision, progress, out,
                        selection, title, extra) -> int:
    from fdalign.eval.episodes import episodes_table, evaluate_episodes, write_episode_results
    from fdalign.train.trainer import resolve_device

    dev = resolve_device(device)
    for enc, _ in models.values():
        enc.to(dev)
    metrics, skipped = evaluate_episodes(models, tests, settings, transform=backend.preprocess_eval(), batch_size=batch_size,
                                device=dev, precision=precision if dev.type == "cuda" else "fp32",
                                num_workers=num_workers, progress=progress)
    print(episodes_table(metrics))
    if any(v for per in skipped.values() for v in per.values()):
        print(f"classes skipped for having fewer than K+Q images: {skipped}", file=sys.stderr)
    if out is not None:
        settings_doc = {"episodes": settings.episodes, "runs": settings.runs, "seed": settings.seed,
                        "settings": [s.name + f" {s.q_query} queries" for s in settings.specs],
                        "heads": list(settings.heads), "combined weight": settings.weight,
                        "targets": {t.name: f"{len(t.split)} images, {t.split.num_classes} classes" for t in tests},
                        "skipped classes (fewer than K+Q images)": skipped}
        write_episode_results(out, metrics, title=title, settings=settings_doc, selection=selection,
                              hashes=_hashes(tests), extra=extra)
        print(f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'report.md'}")
    return 0


# ------------------------------------------------------------------------------------------------


def run_eval(args: argparse.Namespace) -> int:
    from fdalign.data.episodes import load_class_splits
    from fdalign.errors import FDAlignError
    from fdalign.prompts import load_templates

    settings = _settings(episodes=args.episodes, ways=args.ways, shots=args.shots, queries=args.queries,
                         seed=args.seed, heads=args.heads, runs=args.runs, on_small=args.on_small, weight=args.weight)
    templates = load_templates(args.templates)
    targets = _parse_targets(args.target)
    progress = not args.no_progress and sys.stderr.isatty()
    run_dir = Path(args.target_model)
    run_cfg = _read_run_config(run_dir) if run_dir.is_dir() else {}
    if "n_way" in run_cfg and args.data is None:  # a meta-train run's own class splits, read before any model loads
        args.data = run_cfg.get("data")
        args.image_root = args.image_root or run_cfg.get("image_root")
        args.classnames = args.classnames or run_cfg.get("classnames")
    splits = {}
    if args.data and args.data != "none":
        splits = load_class_splits(args.data, args.image_root, args.classnames)
    if "novel" not in splits and not targets:
        raise FDAlignError("nothing to test: pass --data with a novel split (test.csv or novel/) and/or --target NAME=PATH")
    named = _test_splits(splits, targets, settings)
    if run_dir.is_dir():
        backend, models, run_cfg, selection = _load_run_models(run_dir, args.no_zeroshot)
        out = Path(args.out) if args.out else run_dir / "episodes"
        title = f"N-way K-shot evaluation of run {run_dir.name}"
    else:
        from fdalign.backends import load_clip

        backend = load_clip(args.target_model, pretrained=args.pretrained, model_config=args.model_config, device="cpu")
        models, run_cfg, out, title = {"zero-shot": (backend.image_encoder, 10.0)}, {}, args.out, f"Zero-shot {backend.name}"
        selection = {"zero-shot": "nothing selected: CLIP weights, no training or validation data"}
    tests = _with_prototypes(backend, named, templates, args.no_cache, progress)
    selection = dict(selection, **{"test sets": "only evaluated, never used to select anything"})
    return _evaluate_and_write(models, tests, settings, backend, args.batch_size, args.num_workers, args.device,
                               args.precision, progress, out, selection, title, extra={"run_config": run_cfg})


def _read_run_config(run_dir: Path) -> dict:
    """``run_dir/config.yaml`` as a mapping (a meta-train run's MetaConfig, or a train run's TrainConfig)."""
    import yaml

    from fdalign.errors import FDAlignError
    from fdalign.train.run import CONFIG_FILE

    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FDAlignError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass a run of `fdalign meta-train` "
                           "or `fdalign train`, or a CLIP model name")
    return yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}


def _load_run_models(run_dir: Path, no_zeroshot: bool):
    """``(backend, {name: (encoder, proto scale)}, run config dict, selection)`` of a meta-train or train run."""
    import copy

    from fdalign.io import read_json
    from fdalign.train.run import CONFIG_FILE, SELECTION_FILE

    raw = _read_run_config(run_dir)
    if "n_way" not in raw:  # a K-shot run of `fdalign train`
        from fdalign.train.run import load_run

        loaded = load_run(run_dir)
        models = {"fine-tuned": (loaded.backend.image_encoder, 10.0)}
        if not no_zeroshot:
            models["zero-shot"] = (loaded.zero_shot_encoder(), 10.0)
        return loaded.backend, models, {"kshot_run": str(run_dir)}, {"epoch": _selection_line(loaded.selection.get("epoch", {}))}
    from fdalign.train.meta import MetaConfig

    cfg = MetaConfig.from_yaml(run_dir / CONFIG_FILE)
    backend, state, meta = _load_meta_model(run_dir, cfg)
    zs = copy.deepcopy(backend.image_encoder)
    backend.image_encoder.load_state_dict(state)
    models = {"fine-tuned": (backend.image_encoder, float(meta.get("proto_scale", 10.0)))}
    if not no_zeroshot:
        models["zero-shot"] = (zs, 10.0)
    sel_path = run_dir / SELECTION_FILE
    sel = read_json(sel_path, "selection file") if sel_path.is_file() else {}
    return backend, models, cfg.to_dict(), {"epoch": _selection_line((sel or {}).get("epoch", {}))}


def _load_meta_model(run_dir: Path, cfg):
    """The base backend and the run's encoder weights (cast like the base model's), via :func:`load_model`."""
    from fdalign.backends import load_clip
    from fdalign.errors import FDAlignError
    from fdalign.train.run import MODEL_FILE, _cast_like, load_model

    saved = load_model(run_dir / MODEL_FILE)
    backend = load_clip(cfg.model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
    want = saved.metadata.get("base_fingerprint")
    if want and getattr(backend, "fingerprint", want) != want:
        raise FDAlignError(f"{run_dir}: trained from base model {want} but the config now loads {backend.fingerprint}")
    return backend, _cast_like(saved.encoder, backend.image_encoder.state_dict()), saved.metadata

