"""``fdalign.evaluate`` and ``fdalign.zeroshot``: top-1/top-5 on the ID test split and OOD sets.

Both build the same evaluation sets (the ID split plus each ``ood`` NAME=PATH set, its classes
mapped onto the ID classes) and hand ``{model: (encoder, head)}`` to
:func:`fdalign.eval.run_evaluation`, which encodes each set once per distinct encoder. A run
directory is evaluated as trained (fine-tuned, zero-shot and its chosen WiSE-FT mix) into
``RUN/eval`` (``RUN/eval-heads`` with cache heads); a model name is zero-shot CLIP.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError, option
from fdalign.options import default_workers

ZEROSHOT_NAME = "zero-shot"
FINETUNED_NAME = "fine-tuned"
REPORT_TRAIN_KEYS = (
    "model",
    "pretrained",
    "mode",
    "shots",
    "seed",
    "templates",
    "alpha",
    "beta",
    "spc",
    "head",
    "optimizer",
    "lr",
    "epochs",
    "batch_size",
    "selection",
)


@dataclass
class ModelOptions:
    """What ``eval``, ``zeroshot`` and ``meta-eval`` share: the model, the data, the zero-shot prompts,
    how images are encoded and where results go (the same names as the flags)."""

    pretrained: str | None = None
    model_config: str | None = None
    data: str | None = None
    image_root: str | None = None
    classnames: str | None = None
    templates: str = "openai80"
    batch_size: int = 256
    num_workers: int = 0
    device: str = "auto"
    precision: str = "fp32"
    no_cache: bool = False
    no_progress: bool = False
    no_zeroshot: bool = False
    out: str | None = None


@dataclass
class EvalConfig(ModelOptions):
    """The options of ``fdalign eval`` / ``fdalign zeroshot``.

    ``target``: a run directory or a CLIP model name (``model`` for zeroshot); ``heads``: a comma-
    separated list of cache heads (zeroshot, tip, tip-f, ape, ape-t) or None.
    """

    target: str | None = None
    command: str = field(default="eval", metadata={"help": "which command's words the messages use: eval or zeroshot"})
    model: str | None = field(default=None, metadata={"help": "the CLIP model of `fdalign zeroshot` (eval: target)"})
    split: str = "test"
    split_file: str | None = None
    ood: list[str] = field(default_factory=list)
    hash_content: bool = False
    heads: str | None = None
    shots: int = 16
    seed: int = 1
    heads_config: str | None = None
    heads_preset: str | None = None  # 'authors' (or authors:<data set>): the heads' published settings
    num_workers: int = field(default_factory=default_workers)  # min(cores, 8): evaluation decodes every image
    pixel_cache: str | None = None  # folder of the pixel cache (default: $FDALIGN_PIXEL_CACHE, else none)
    pixel_cache_budget: float | None = None  # GB: least recently used entries beyond it are deleted
    no_pixel_cache: bool = False
    channels_last: bool = False  # CUDA only, off by default (docs/evaluation-at-scale.md)
    jpeg_draft: bool = False  # decode JPEGs at a reduced DCT scale (opt-in: pixels differ; the page above)


@dataclass
class Evaluation:
    """``metrics`` ``{set: {row: {"top1", "top5", "n"}}}``, each set's role (test / ood), what was
    selected on which data, and the folder of metrics.json + report.md (None: not written)."""

    metrics: dict
    roles: dict
    selection: dict
    out: Path | None


def evaluate(
    run_or_model: str | os.PathLike | Any = None,
    data: str | os.PathLike | None = None,
    *,
    ood: str | Sequence[str] = (),
    heads: str | Sequence[str] | None = None,
    model: Any = None,
    progress: bool | None = None,
    **options: Any,
) -> Evaluation:
    """``fdalign eval RUN_OR_MODEL``: a run as trained, or zero-shot CLIP.

    Args:
        run_or_model: a run directory (or :class:`~fdalign.workflows.kshot.Run`), a CLIP model name, or
            a CLIP you built (as ``model``).
        data: the data to evaluate on (a run's own data when omitted).
        ood: OOD sets ``NAME=PATH`` (one string or a list).
        heads: cache heads, a list or a comma string (zeroshot, tip, tip-f, ape, ape-t).
        model: a CLIP built in Python (see :func:`fdalign.finetune`): zero-shot it, or, with a run
            directory, the base model a run trained from it was made from.
        progress: show progress (bars on a terminal, else one line per set); ``no_progress`` also works.
        options: :class:`EvalConfig` fields (``device``, ``batch_size``, ``out``...).
    """
    if heads is not None and not isinstance(heads, str):
        heads = ",".join(heads)
    if isinstance(ood, (str, os.PathLike)):
        ood = [ood]
    if progress is not None:
        options["no_progress"] = not progress
    if (
        run_or_model is not None
        and not isinstance(run_or_model, (str, os.PathLike))
        and not hasattr(run_or_model, "out")
    ):
        run_or_model, model = None, run_or_model  # a model object given first
    backend = None
    if model is not None:
        from fdalign.backends.custom import as_backend

        backend = as_backend(model)
    target = getattr(run_or_model, "out", run_or_model)
    if target is None and backend is None:
        raise FDAlignError("evaluate() needs a run directory, a CLIP model name, or model=<your CLIP>")
    if target is None:
        assert backend is not None  # refused above otherwise
        target = backend.name
    target = str(target)
    config = EvalConfig(target=target, data=None if data is None else str(data), ood=list(ood), heads=heads, **options)
    return evaluate_config(config, backend=backend, backend_is_target=run_or_model is None)


def evaluate_config(config: EvalConfig, backend=None, backend_is_target: bool = False) -> Evaluation:
    """Run ``fdalign eval`` (or ``zeroshot``, with ``command="zeroshot"`` and ``model``) as configured;
    ``backend``: a CLIP built in Python, zero-shot (``backend_is_target``) or a run's base model."""
    args = dataclasses.replace(config, ood=list(config.ood))
    if args.batch_size < 1:
        raise FDAlignError(f"--batch-size must be >= 1 (got {args.batch_size})")
    args.device = _resolve_device(args.device)
    with _pixel_cache(args) as cache:
        result = _evaluate(args, backend, backend_is_target)
    if cache is not None:
        print(cache.stats.line())  # hits, misses, bytes, seconds saved
    return result


def _pixel_cache(args):
    """The pixel cache of ``--pixel-cache`` (or ``$FDALIGN_PIXEL_CACHE``) with its budget; none with
    ``--no-pixel-cache``."""
    import contextlib

    from fdalign.eval import pixelcache

    if args.no_pixel_cache:
        return pixelcache.enabled(None)
    root = args.pixel_cache or os.environ.get(pixelcache.ENV)
    if root is None:
        if args.pixel_cache_budget is not None:
            raise FDAlignError(
                f"--pixel-cache-budget needs a pixel cache: pass --pixel-cache DIR (or set ${pixelcache.ENV})"
            )
        return contextlib.nullcontext(None)
    return pixelcache.enabled(root, args.pixel_cache_budget)


def _evaluate(args, backend=None, backend_is_target: bool = False) -> Evaluation:
    if backend is not None and backend_is_target:
        if args.data is None:
            raise FDAlignError(f"{option('data')} is required when evaluating a model (not a run directory)")
        args.model = backend.name
        return _zeroshot(args, backend)
    if args.command == "eval" and args.target is not None and _is_run_dir(args.target):
        return _eval_run(args, backend)
    if args.command == "eval":
        if not args.target:
            raise FDAlignError("fdalign eval needs RUN_OR_MODEL: a run directory or a CLIP model name")
        if _is_run_dir(args.target):
            return _eval_run(args)
        if Path(args.target).exists() and not args.model_config:
            raise FDAlignError(
                f"{args.target} is not a run directory written by `fdalign train` (no run config found); "
                "pass a run directory or a CLIP model name"
            )
        if _looks_like_path(args.target) and not args.model_config:
            raise FDAlignError(
                f"no such run directory: {args.target}; pass the --out of `fdalign train`, or a CLIP "
                "model name with --data"
            )
        args.model = args.target
    if args.data is None:
        where = f"; {args.target} is no run directory (no such folder)" if args.command == "eval" else ""
        raise FDAlignError(f"--data is required when evaluating a model (not a run directory){where}")
    return _zeroshot(args)


def _looks_like_path(target: str) -> bool:
    """A folder path rather than a model name (ViT-B-32, hf:org/name, fdalign-world)."""
    return not target.startswith(("hf:", "hf-hub:")) and (os.sep in target or "/" in target or target.startswith("."))


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _is_run_dir(target: str) -> bool:
    return Path(target).is_dir()


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _set_lines(args):
    """One line per evaluated set when progress is on but stderr is no terminal (bars would not show)."""
    from fdalign.callbacks import set_line

    return set_line(f"fdalign {args.command}") if not args.no_progress and not sys.stderr.isatty() else None


def _open_sets(args, id_classnames: list[str] | None = None):
    """Read (not decode) the ID split and the OOD sets, mapped to the ID classes.

    Returns ``(id_split, [(name, ood_split, class_subset or None)])``. Done before any model loads
    so that a wrong path or an unmatched class fails in a second.
    """

    from fdalign.data import load_ood_sets, open_dataset, pick_split

    splits = open_dataset(args.data, args.image_root, args.classnames, split_file=getattr(args, "split_file", None))
    if args.split == "test" and "test" not in splits and "train" in splits and "val" in splits:
        # an index file: its val part chose the run's epoch, so it is no test set
        raise FDAlignError(
            f"--data {args.data} has no test split, so no test accuracy exists (its val images are selection "
            "data); pass --split-file split_zhou_<Name>.json whose test list to evaluate"
        )
    id_split = pick_split(splits, args.split)
    if id_classnames is not None:
        id_split = _align_to_run_classes(id_split, id_classnames, args.data)
    if len(id_split) == 0:
        raise FDAlignError(f"the '{id_split.name}' split of {args.data} has no images")
    id_name = id_split.name
    from fdalign.data.imagenet import wnid_name_warning

    w = wnid_name_warning(id_split.classnames, f"--data {args.data}")
    if w:
        print(f"fdalign {args.command}: warning: {w}", file=sys.stderr)
    ood = load_ood_sets(args.ood, id_split.classnames, id_split.class_keys, reserved={id_name})
    return id_name, id_split, ood


def _align_to_run_classes(split, run_classnames: list[str], data):
    """Relabel ``split`` into the run's class order; the heads' column c is ``run_classnames[c]``.

    The same names in another order (e.g. a CSV sorted differently) are remapped; other names are
    an error, since renaming labels by position would silently score against the wrong classes.
    """
    from fdalign.data import map_ood_to_id, normalize_classname

    have = [normalize_classname(c) for c in split.classnames]
    want = [normalize_classname(c) for c in run_classnames]
    if have == want:
        return split
    if sorted(have) != sorted(want):
        extra = sorted(set(have) - set(want))
        raise FDAlignError(
            f"--data {data} has class(es) the run was not trained on ({', '.join(map(repr, extra[:3]))}"
            f"{', ...' if len(extra) > 3 else ''}); the run knows {len(want)} classes: "
            f"{', '.join(map(repr, run_classnames[:5]))}{', ...' if len(want) > 5 else ''}. Evaluate on the run's "
            "data set, or pass --classnames with the names the run used"
            if extra
            else f"--data {data} has {len(have)} classes but the run was trained on {len(want)}; evaluate on the "
            "run's data set"
        )
    mapped, _ = map_ood_to_id(split, list(run_classnames))
    return mapped


def _eval_sets(id_name, id_split, ood, transform, jpeg_draft: bool = False) -> dict:
    from fdalign.data import ImageDataset
    from fdalign.data.datasets import draft_size
    from fdalign.eval import EvalSet

    draft = draft_size(transform) if jpeg_draft else None
    sets = {id_name: EvalSet(id_name, ImageDataset(id_split, transform, draft), None, role="test")}
    for name, split, subset in ood:
        sets[name] = EvalSet(name, ImageDataset(split, transform, draft), subset, role="ood")
    return sets


def _hashes(args, id_name, id_split, ood) -> dict:
    from fdalign.data import split_hash

    h = {id_name: split_hash(id_split, content=args.hash_content)}
    for name, split, _ in ood:
        h[name] = split_hash(split, content=args.hash_content)
    return h


def _zeroshot_head(backend, classnames, templates, args):
    from fdalign.heads import PrototypeHead
    from fdalign.prototypes import build_prototypes

    protos = build_prototypes(
        backend,
        classnames,
        templates,
        spc=None,
        cache_dir=False if args.no_cache else None,
        progress=_progress(args) or None,
    )
    return PrototypeHead(protos.class_prototypes, scale=backend.logit_scale).to(args.device)


def _coverage(id_name, id_split, ood) -> dict:
    """Each set's class count and whether its logits were restricted, for metrics.json / report.md."""
    from fdalign.eval.metrics import class_coverage

    return {id_name: class_coverage(id_split.num_classes, None), **{o.name: o.coverage() for o in ood}}


def _class_table(args, id_split):
    from fdalign.data.datasets import classname_table, is_plain_classname_list

    return classname_table(id_split) if is_plain_classname_list(args.classnames) else None


def _finish(
    args, metrics, out, *, config, hashes, selection, roles, title, extra=None, classes=None, class_table=None
) -> Evaluation:
    from fdalign.eval import write_metrics, write_report

    if out is not None:
        doc = {
            "roles": roles,
            "classes": classes,
            "hashes": hashes,
            "config": config,
            "selection": selection,
            **(extra or {}),
        }
        write_metrics(out, metrics, doc)
        write_report(
            out,
            metrics,
            selection=selection,
            config=config,
            hashes=hashes,
            roles=roles,
            title=title,
            classes=classes,
            class_table=class_table,
        )
    return Evaluation(metrics, roles, selection, Path(out) if out is not None else None)


def _zeroshot(args, backend=None) -> Evaluation:
    from fdalign.backends import load_clip
    from fdalign.eval import run_evaluation
    from fdalign.prompts import load_templates

    templates = load_templates(args.templates)
    id_name, id_split, ood = _open_sets(args)
    hashes = _hashes(args, id_name, id_split, ood)

    if backend is None:
        backend = load_clip(args.model, pretrained=args.pretrained, model_config=args.model_config, device=args.device)
    else:
        backend.to(args.device)
    head = _zeroshot_head(backend, id_split.classnames, templates, args)
    from fdalign.eval.featcache import frozen

    frozen(backend.image_encoder)  # unchanged CLIP: its features may come from the feature cache
    sets = _eval_sets(id_name, id_split, ood, backend.preprocess_eval(), args.jpeg_draft)
    if getattr(args, "heads", None):  # cache-model heads (fdalign.eval.heads): their rows and selections
        from fdalign.eval.heads import evaluate_model_heads

        metrics, heads_selection = evaluate_model_heads(args, backend, head, sets, _progress(args))
    else:
        metrics, heads_selection = (
            run_evaluation(
                {ZEROSHOT_NAME: (backend.image_encoder, head)},
                sets,
                batch_size=args.batch_size,
                device=args.device,
                precision=args.precision,
                progress=_progress(args),
                num_workers=args.num_workers,
                on_set=_set_lines(args),
                channels_last=args.channels_last,
            ),
            None,
        )
    config = {
        "model": backend.name,
        "pretrained": args.pretrained,
        "model_config": args.model_config,
        "fingerprint": backend.fingerprint,
        "templates": args.templates,
        "num_templates": len(templates),
        "data": str(args.data),
        "split": id_split.name,
        "ood": list(args.ood),
        "precision": args.precision,
    }
    selection = heads_selection or {
        "zero-shot": "nothing selected: fixed templates and CLIP weights, no training or validation data"
    }
    roles = {s.name: s.role for s in sets.values()}
    return _finish(
        args,
        metrics,
        args.out,
        config=config,
        hashes=hashes,
        selection=selection,
        roles=roles,
        title=f"Zero-shot {backend.name}",
        classes=_coverage(id_name, id_split, ood),
        class_table=_class_table(args, id_split),
    )


def _eval_run(args, backend=None) -> Evaluation:
    from fdalign.eval import run_evaluation
    from fdalign.exporting import finished_run
    from fdalign.train.run import load_run

    run_dir = finished_run(args.target, "eval")  # not a best-so-far model of a run still training
    loaded = load_run(run_dir, args.device, backend=backend)
    cfg = _as_dict(loaded.config)
    if args.classnames is None:
        args.classnames = cfg.get("classnames")  # the display names the heads were built from
    if args.data is None:
        # the run's own data and OOD sets, exactly as it was trained
        args.data = cfg.get("data")
        if args.image_root is None:
            args.image_root = cfg.get("image_root")
        if not args.ood:
            args.ood = list(cfg.get("ood") or [])
        if args.split_file is None:
            args.split_file = cfg.get("split_file")
        if args.data is None:
            raise FDAlignError(f"run {run_dir} records no data path; pass --data")
    if not loaded.classnames:
        raise FDAlignError(f"{run_dir}: the model file records no class names; re-run `fdalign train`")
    id_name, id_split, ood = _open_sets(args, id_classnames=list(loaded.classnames))
    _refuse_selection_images(run_dir, id_split, ood)
    _warn_training_images(run_dir, id_split, ood)
    hashes = _hashes(args, id_name, id_split, ood)
    _warn_hash_mismatch(run_dir, hashes)

    # row names as in the training report: zero-shot, fine-tuned, wiseft-<alpha>
    encoder = loaded.backend.image_encoder
    models: dict[str, tuple[Any, Any]] = {}  # row -> (image encoder, head)
    if not args.no_zeroshot and loaded.zeroshot_head is not None:
        # a linear probe never trains the encoder, so zero-shot reads the same features
        base_encoder = encoder if cfg.get("mode") == "linear-probe" else loaded.zero_shot_encoder().to(args.device)
        models[ZEROSHOT_NAME] = (base_encoder, loaded.zeroshot_head)
        from fdalign.eval.featcache import frozen

        frozen(base_encoder)  # the pretrained weights: its features may come from the feature cache
    models[FINETUNED_NAME] = (encoder, loaded.head)
    alpha = (loaded.selection.get("wiseft_alpha") or {}).get("chosen")
    if alpha is not None and 0.0 < float(alpha) < 1.0 and cfg.get("mode") != "linear-probe":
        enc_a, head_a = loaded.wiseft(float(alpha))
        models[f"wiseft-{float(alpha):g}"] = (enc_a.to(args.device), head_a.to(args.device))
    sets = _eval_sets(id_name, id_split, ood, loaded.backend.preprocess_eval(), args.jpeg_draft)
    if args.heads:  # cache-model heads (fdalign.eval.heads): rows "Tip", "Tip + FD-Align", ...
        from fdalign.eval.heads import evaluate_run_heads

        metrics, selection = evaluate_run_heads(args, loaded, models, sets, _progress(args))
    else:
        metrics = run_evaluation(
            models,
            sets,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            progress=_progress(args),
            num_workers=args.num_workers,
            on_set=_set_lines(args),
            channels_last=args.channels_last,
        )
        selection = _selection_from_run(loaded.selection, cfg)
    roles = {s.name: s.role for s in sets.values()}
    inputs = _eval_inputs(args)
    out = (
        _eval_out(Path(args.out), inputs, True)
        if args.out
        else _eval_out(run_dir / ("eval-heads" if args.heads else "eval"), inputs, False)
    )
    config = {
        "run": str(run_dir),
        "data": str(args.data),
        "split": id_split.name,
        "ood": list(args.ood),
        "precision": args.precision,
    }
    # the report lists the settings that define the method; metrics.json keeps the whole config
    config.update({k: cfg[k] for k in REPORT_TRAIN_KEYS if k in cfg})
    return _finish(
        args,
        metrics,
        out,
        config=config,
        hashes=hashes,
        selection=selection,
        roles=roles,
        title=f"Evaluation of run {run_dir.name}",
        extra={"train_config": cfg, "inputs": inputs},
        classes=_coverage(id_name, id_split, ood),
        class_table=_class_table(args, id_split),
    )


EVAL_INPUTS = (
    "data",
    "image_root",
    "split",
    "split_file",
    "ood",
    "classnames",
    "templates",
    "heads",
    "heads_preset",
    "heads_config",
    "shots",
    "seed",
    "no_zeroshot",
)


def _eval_inputs(args) -> dict:
    """What makes one evaluation of a run differ from another (its folder is only replaced by the same)."""
    return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k in EVAL_INPUTS for v in [getattr(args, k, None)]}


def _recorded_inputs(folder: Path):
    p = folder / "metrics.json"
    try:
        import json

        return json.loads(p.read_text(encoding="utf-8")).get("inputs")
    except (OSError, ValueError, AttributeError):
        return None


def _eval_out(base: Path, inputs: dict, chosen: bool) -> Path:
    """The folder an evaluation of a run goes to. An earlier evaluation with other inputs (e.g. five heads,
    now ``--heads tip``) is never replaced without a word: under the default folder the next free
    ``NAME-2``, ``NAME-3``, ... is used; an ``--out`` the user chose is replaced with a warning."""

    def differs(folder: Path) -> list[str] | None:
        if not (folder / "metrics.json").is_file():
            return None
        old = _recorded_inputs(folder)
        if not isinstance(old, dict):
            return ["not recorded"]
        return [k for k in inputs if old.get(k) != inputs[k]] or None

    diff = differs(base)
    if diff is None:
        return base
    if chosen:
        print(
            f"fdalign eval: warning: replacing the earlier evaluation in {base} (other inputs: {', '.join(diff)})",
            file=sys.stderr,
        )
        return base
    n = 2
    while True:
        cand = base.with_name(f"{base.name}-{n}")
        if differs(cand) is None:
            print(
                f"fdalign eval: note: {base} holds an earlier evaluation with other inputs ({', '.join(diff)}); "
                f"writing {cand} instead (pass --out to choose the folder)",
                file=sys.stderr,
            )
            return cand
        n += 1


def _as_dict(config) -> dict:
    import dataclasses

    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config)


def _selection_from_run(recorded: dict, cfg: dict) -> dict:
    """What the run chose on which data (its ``selection.json``), for the report."""
    sel = {}
    if cfg.get("selection"):
        sel["epoch rule"] = f"{cfg['selection']} (best: highest val top-1; last: the final epoch)"
    sel.update(recorded or {})
    sel["test / OOD sets"] = "only evaluated here; never used to select anything"
    return sel


def _warn_hash_mismatch(run_dir: Path, hashes: dict) -> None:
    """Say so when a set evaluated here is not the one the run recorded under the same name."""
    import json

    from fdalign.train.run import HASHES_FILE

    p = run_dir / HASHES_FILE
    try:
        recorded = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except ValueError:
        return
    for name, h in hashes.items():
        old = recorded.get(name)
        # only like for like: "list:" and "content:" hashes are never comparable
        if isinstance(old, str) and old.split(":", 1)[0] == h.split(":", 1)[0] and old != h:
            print(f"fdalign eval: warning: set '{name}' differs from the one recorded in {p}", file=sys.stderr)


def _shared_with(run_dir: Path, which: str, sets: list):
    """``(split file, [(set, files of it listed in RUN/splits/<which>.json)])``, by resolved path; only
    files whose name is a listed image's name are resolved, which keeps ImageNet cheap."""
    from fdalign.data import load_split

    p = run_dir / "splits" / f"{which}.json"
    if not p.is_file():
        return None, []
    listed = load_split(p)
    chosen = {os.path.realpath(listed.resolve(x)) for x in listed.samples}
    names = {os.path.basename(c) for c in chosen}
    out = []
    for split in sets:
        maybe = (split.resolve(x) for x in split.samples if os.path.basename(x.path) in names)
        shared = [f for f in maybe if os.path.realpath(f) in chosen]
        if shared:
            out.append((split, shared))
    return listed, out


def _warn_training_images(run_dir: Path, id_split, ood) -> None:
    """A set holding the run's training images (``--split train``) is scored, but never as a test result."""
    listed, found = _shared_with(run_dir, "train", [id_split] + [o.split for o in ood])
    for split, shared in found:
        print(
            f"fdalign eval: warning: set '{split.name}' holds {len(shared)} of the run's {len(listed)} training "
            f"images (first: {shared[0]}); its accuracy measures fit to the training data, not a test result",
            file=sys.stderr,
        )


def _refuse_selection_images(run_dir: Path, id_split, ood) -> None:
    """A set holding the run's validation images (they chose its epoch and WiSE-FT weight) is no test set.

    Compared by resolved path (symlinks followed), e.g. ``--split val`` of a train/val/test folder;
    only files whose name is a selection image's name are resolved, which keeps ImageNet cheap.
    """
    import os

    from fdalign.data import load_split

    p = run_dir / "splits" / "val.json"
    if not p.is_file():
        return
    val = load_split(p)
    chosen = {os.path.realpath(val.resolve(x)) for x in val.samples}
    names = {os.path.basename(c) for c in chosen}
    for split in [id_split] + [o.split for o in ood]:
        maybe = (split.resolve(x) for x in split.samples if os.path.basename(x.path) in names)
        shared = [f for f in maybe if os.path.realpath(f) in chosen]
        if shared:
            raise FDAlignError(
                f"set '{split.name}' holds {len(shared)} of the run's {len(val)} validation images (first: "
                f"{shared[0]}), which chose its epoch and WiSE-FT weight, so its accuracy would be no test "
                f"result; evaluate on the test split instead"
            )
