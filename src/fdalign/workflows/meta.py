"""``fdalign.meta_train`` and ``fdalign.meta_evaluate``: the paper's N-way K-shot protocol.

``meta_train(MetaConfig)`` meta-trains on base-class episodes, chooses the epoch on val-class
episodes and tests novel / cross-domain episodes; ``meta_evaluate(MetaEvalConfig)`` scores a run
or a CLIP model on episodes. Both write the same files as ``fdalign meta-train`` / ``meta-eval``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdalign.errors import FDAlignError
from fdalign.workflows.evaluation import ModelOptions

if TYPE_CHECKING:
    from fdalign.train.meta_config import MetaConfig


@dataclass
class MetaRun:
    """A meta-training run: its directory, the selected epoch and the test episodes' accuracies.

    ``metrics`` is empty when nothing was tested (no novel split and no target, or test_episodes 0).
    """

    out: Path
    config: Any
    best_epoch: int
    best_val: float
    encoder: Any = None
    proto_scale: float = 10.0
    episodes: EpisodeEvaluation | None = None


@dataclass
class EpisodeEvaluation:
    """Episode accuracies ``metrics`` (see :func:`fdalign.eval.episodes.episodes_table`), the classes
    skipped for having fewer than K+Q images, and where they were written (None: not written)."""

    metrics: dict
    skipped: dict
    out: Path | None


@dataclass
class MetaEvalConfig(ModelOptions):
    """The options of ``fdalign meta-eval`` (the same names as its flags); ``target_model`` is a run or a model."""

    target_model: str | None = None
    target: list[str] = field(default_factory=list)
    episodes: int = 2000
    ways: int = 5
    shots: list[int] = field(default_factory=lambda: [1, 5])
    queries: int = 15
    seed: int = 0
    heads: list[str] | None = None
    runs: int = 1
    on_small: str = "skip"
    weight: float = 0.5


def meta_train(config: MetaConfig) -> MetaRun:
    """Run ``fdalign meta-train`` with ``config`` (a :class:`~fdalign.train.meta.MetaConfig`)."""
    from fdalign.io import run_lock
    from fdalign.workflows.kshot import check_run_request

    cfg = config.validate()
    check_run_request(cfg)
    assert cfg.out  # check_run_request raised otherwise
    with run_lock(cfg.out, "run directory"):  # one process per run directory, as fdalign.finetune
        return _meta_train_locked(cfg)


def _meta_train_locked(cfg) -> MetaRun:
    from fdalign.data import split_hash
    from fdalign.data.episodes import TRAIN_FLAGS, class_pool, load_class_splits
    from fdalign.prompts import load_templates

    out = Path(cfg.out)
    templates = load_templates(cfg.templates)
    splits = load_class_splits(cfg.data, cfg.image_root, cfg.classnames)
    for role in ("base", "val"):
        if role not in splits:
            raise FDAlignError(
                f"--data {cfg.data} has no {role} classes (found: {', '.join(splits)}); meta-training "
                "needs train.csv + val.csv or base/ + val/"
            )
    for role in ("base", "val"):
        # too few classes or images: fail before loading a model
        class_pool(splits[role], cfg.spec, cfg.on_small, TRAIN_FLAGS)
    settings = episode_settings(
        episodes=max(cfg.test_episodes, 1),
        ways=cfg.n_way,
        shots=cfg.test_shots,
        queries=cfg.q_query,
        on_small=cfg.on_small,
    )
    test_flags = dict(TRAIN_FLAGS, shots="--test-shots")
    tests = _test_splits(splits, _parse_targets(cfg.target), settings, test_flags) if cfg.test_episodes else []
    hashes = {role: split_hash(s, content=False) for role, s in splits.items()}
    _check_resume_hashes(out, hashes, cfg.resume)
    return _meta_train_and_test(cfg, splits, templates, tests, settings, hashes)


def _meta_train_and_test(cfg, splits, templates, tests, settings, hashes) -> MetaRun:
    from fdalign.backends import load_clip
    from fdalign.io import atomic_write_json
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.meta import meta_train as train_on_episodes
    from fdalign.train.meta import zeroshot_copy

    out = Path(cfg.out)
    progress = cfg.progress and sys.stderr.isatty()
    backend = load_clip(cfg.model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
    spc = (
        SPCConfig(keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.spc_seed, renormalize=cfg.spc_renormalize)
        if cfg.spc
        else None
    )
    protos = build_prototypes(backend, splits["base"].classnames, templates, spc=spc, progress=progress or None)
    out.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(out / "config.yaml")
    atomic_write_json(out / "hashes.json", hashes)
    print(
        f"meta-training {backend.name} on {cfg.spec.name} episodes of {splits['base'].num_classes} base classes "
        f"({cfg.epochs} x {cfg.episodes_per_epoch} episodes); run directory {out}",
        file=sys.stderr,
    )
    result = train_on_episodes(
        backend,
        splits["base"],
        splits["val"],
        protos.loss_prototypes,
        cfg,
        out,
        protos.class_prototypes,
        progress=progress,
    )
    run = MetaRun(
        out=out,
        config=cfg,
        best_epoch=result.best_epoch,
        best_val=result.best_val,
        encoder=result.encoder,
        proto_scale=result.proto_scale,
    )
    if not tests:
        return run
    tests = _with_prototypes(backend, tests, templates, no_cache=False, progress=progress)
    zs = zeroshot_copy(result.encoder, result.zeroshot_encoder_state)
    models = {"fine-tuned": (result.encoder, result.proto_scale), "zero-shot": (zs, 10.0)}
    selection = {
        "epoch": _selection_line(result.selection.to_json().get("epoch", {})),
        "test sets": "only evaluated, never used to select anything",
    }
    run.episodes = _evaluate_and_write(
        models,
        tests,
        settings,
        backend,
        cfg.eval_batch_size,
        cfg.num_workers,
        cfg.device,
        cfg.precision,
        progress,
        out,
        selection,
        title=f"FD-Align meta-training: {backend.name} on {Path(cfg.data).name}",
        extra={
            "config": cfg.to_dict(),
            "train": {
                "best_epoch": result.best_epoch,
                "val_acc_per_epoch": result.val_acc,
                "steps": result.steps,
                "seconds": round(result.seconds, 1),
                "proto_scale": result.proto_scale,
            },
        },
    )
    return run


def meta_evaluate(run_or_model: str | os.PathLike[str], **options) -> EpisodeEvaluation:
    """``fdalign meta-eval RUN_OR_MODEL``; ``options`` are :class:`MetaEvalConfig` fields."""
    return meta_evaluate_config(MetaEvalConfig(target_model=str(run_or_model), **options))


def meta_evaluate_config(cfg: MetaEvalConfig) -> EpisodeEvaluation:
    from fdalign.data.episodes import load_class_splits
    from fdalign.prompts import load_templates

    settings = episode_settings(
        episodes=cfg.episodes,
        ways=cfg.ways,
        shots=cfg.shots,
        queries=cfg.queries,
        seed=cfg.seed,
        heads=cfg.heads,
        runs=cfg.runs,
        on_small=cfg.on_small,
        weight=cfg.weight,
    )
    templates = load_templates(cfg.templates)
    targets = _parse_targets(cfg.target)
    progress = not cfg.no_progress and sys.stderr.isatty()
    if not cfg.target_model:
        raise FDAlignError("meta-eval needs RUN_OR_MODEL: a run directory or a CLIP model name")
    run_dir = Path(cfg.target_model)
    run_cfg = _read_run_config(run_dir) if run_dir.is_dir() else {}
    data, image_root, classnames = cfg.data, cfg.image_root, cfg.classnames
    if "n_way" in run_cfg and data is None:  # a meta-train run's own class splits, read before any model loads
        data = run_cfg.get("data")
        image_root = image_root or run_cfg.get("image_root")
        classnames = classnames or run_cfg.get("classnames")
    splits = {}
    if data and data != "none":
        splits = load_class_splits(data, image_root, classnames)
    if "novel" not in splits and not targets:
        raise FDAlignError(
            "nothing to test: pass --data with a novel split (test.csv or novel/) and/or --target NAME=PATH"
        )
    named = _test_splits(splits, targets, settings)
    if run_dir.is_dir():
        backend, models, run_cfg, selection = _load_run_models(run_dir, cfg.no_zeroshot)
        out: Path | str | None = Path(cfg.out) if cfg.out else run_dir / "episodes"
        title = f"N-way K-shot evaluation of run {run_dir.name}"
    else:
        from fdalign.backends import load_clip

        backend = load_clip(cfg.target_model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
        models, run_cfg, out, title = (
            {"zero-shot": (backend.image_encoder, 10.0)},
            {},
            cfg.out,
            f"Zero-shot {backend.name}",
        )
        selection = {"zero-shot": "nothing selected: CLIP weights, no training or validation data"}
    tests = _with_prototypes(backend, named, templates, cfg.no_cache, progress)
    selection = dict(selection, **{"test sets": "only evaluated, never used to select anything"})
    return _evaluate_and_write(
        models,
        tests,
        settings,
        backend,
        cfg.batch_size,
        cfg.num_workers,
        cfg.device,
        cfg.precision,
        progress,
        out,
        selection,
        title,
        extra={"run_config": run_cfg},
    )


def episode_settings(*, episodes, ways, shots, queries, seed=0, heads=None, runs=1, on_small="skip", weight=0.5):
    from fdalign.data.episodes import EpisodeSpec
    from fdalign.eval.episodes import EpisodeEvalSettings

    if episodes < 1 or runs < 1:
        raise FDAlignError("--episodes and --runs must be >= 1")
    if not 0 <= weight <= 1:
        raise FDAlignError(f"--weight must be in [0, 1] (got {weight})")
    s = EpisodeEvalSettings(
        specs=[EpisodeSpec(ways, k, queries) for k in shots],
        episodes=episodes,
        seed=seed,
        runs=runs,
        on_small=on_small,
        weight=weight,
    )
    if heads:
        s.heads = tuple(heads)
    return s


def _evaluate_and_write(
    models, tests, settings, backend, batch_size, num_workers, device, precision, progress, out, selection, title, extra
) -> EpisodeEvaluation:
    from fdalign.eval.episodes import evaluate_episodes, write_episode_results
    from fdalign.train.trainer import resolve_device

    dev = resolve_device(device)
    for enc, _ in models.values():
        enc.to(dev)
    metrics, skipped = evaluate_episodes(
        models,
        tests,
        settings,
        transform=backend.preprocess_eval(),
        batch_size=batch_size,
        device=dev,
        precision=precision if dev.type == "cuda" else "fp32",
        num_workers=num_workers,
        progress=progress,
    )
    if out is not None:
        settings_doc = {
            "episodes": settings.episodes,
            "runs": settings.runs,
            "seed": settings.seed,
            "settings": [s.name + f" {s.q_query} queries" for s in settings.specs],
            "heads": list(settings.heads),
            "combined weight": settings.weight,
            "targets": {t.name: f"{len(t.split)} images, {t.split.num_classes} classes" for t in tests},
            "skipped classes (fewer than K+Q images)": skipped,
        }
        write_episode_results(
            out, metrics, title=title, settings=settings_doc, selection=selection, hashes=_hashes(tests), extra=extra
        )
    return EpisodeEvaluation(metrics, skipped, Path(out) if out is not None else None)


def _parse_targets(specs: list[str]) -> list[tuple[str, str]]:
    from fdalign.data.ood import parse_ood_arg

    out: list[tuple[str, str]] = []
    for s in specs:
        name, path = parse_ood_arg(s)
        if name in {n for n, _ in out} or name == "novel":
            raise FDAlignError(f"--target name {name!r} is used twice (or is 'novel', the --data novel split)")
        out.append((name, path))
    return out


def _test_splits(splits: dict, targets: list[tuple[str, str]], settings, flags=None) -> list[tuple[str, object]]:
    """The novel split (if any) then each --target, read and checked against every test setting
    (``flags``: the options the caller's errors name, meta-eval's by default)."""
    from fdalign.data.episodes import class_pool, load_target

    named = [("novel", splits["novel"])] if "novel" in splits else []
    named += [(name, load_target(path, name=name)) for name, path in targets]
    for _, split in named:
        for spec in settings.specs:
            class_pool(split, spec, settings.on_small, flags)  # too few classes / images: fail before any encoding
    return named


def _with_prototypes(backend, named, templates, no_cache: bool, progress: bool):
    """EpisodeTargets with the text prototypes of their classes (for the text / combined heads)."""
    from fdalign.eval.episodes import EpisodeTarget
    from fdalign.prototypes import build_prototypes

    out = []
    for name, split in named:
        protos = build_prototypes(
            backend,
            split.classnames,
            templates,
            spc=None,
            cache_dir=False if no_cache else None,
            progress=progress or None,
        )
        out.append(EpisodeTarget(name, split, protos.class_prototypes))
    return out


def _hashes(targets) -> dict:
    from fdalign.data import split_hash

    return {t.name: split_hash(t.split, content=False) for t in targets}


def _check_resume_hashes(out: Path, hashes: dict, resume: bool) -> None:
    import json

    if resume and (out / "hashes.json").is_file():
        old = json.loads((out / "hashes.json").read_text(encoding="utf-8"))
        for k in ("base", "val"):
            if old.get(k) not in (None, hashes.get(k)):
                raise FDAlignError(f"cannot resume {out}: its {k} classes' images differ from the ones listed now")


def _selection_line(entry: dict) -> str:
    if not entry:
        return "nothing selected"
    return (
        f"epoch {entry.get('chosen')}, chosen on {entry.get('on')} by {entry.get('metric')} = {entry.get('score'):.2f}"
    )


def _read_run_config(run_dir: Path) -> dict:
    """``run_dir/config.yaml`` as a mapping (a meta-train run's MetaConfig, or a train run's TrainConfig)."""
    from fdalign.options import read_yaml
    from fdalign.train.run import CONFIG_FILE

    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise FDAlignError(
            f"{run_dir} is not a run directory (no {CONFIG_FILE}); pass a run of `fdalign meta-train` "
            "or `fdalign train`, or a CLIP model name"
        )
    d = read_yaml(cfg_path, "run config")  # a damaged file is named, not a traceback
    if not isinstance(d, dict):
        raise FDAlignError(
            f"run config {cfg_path} is {'empty' if d is None else 'not a mapping of option: value'}; "
            "restore it from a copy, or train the run again"
        )
    return d


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
        return (
            loaded.backend,
            models,
            {"kshot_run": str(run_dir)},
            {"epoch": _selection_line(loaded.selection.get("epoch", {}))},
        )
    from fdalign.train.meta_config import MetaConfig

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
    """The base backend and the run's encoder weights (cast like the base model's), via :func:`load_run_model`."""
    from fdalign.backends import load_clip
    from fdalign.train.run import _cast_like, load_run_model

    saved = load_run_model(run_dir)
    backend = load_clip(cfg.model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
    want = saved.metadata.get("base_fingerprint")
    if want and getattr(backend, "fingerprint", want) != want:
        raise FDAlignError(f"{run_dir}: trained from base model {want} but the config now loads {backend.fingerprint}")
    return backend, _cast_like(saved.encoder, backend.image_encoder.state_dict()), saved.metadata
