"""``fdalign zeroshot`` and ``fdalign eval``: top-1/top-5 on the in-distribution test split and OOD sets.

Both commands build the same evaluation sets (the ID split plus each ``--ood NAME=PATH`` set, its
classes mapped onto the ID classes) and hand ``{model: (encoder, head)}`` to
:func:`fdalign.eval.run_evaluation`, which encodes each set once per distinct encoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fdalign.cli import HelpFormatter, add_encoding_arguments, add_model_arguments

_DATA_HELP = (
    "in-distribution data: an ImageFolder root (ROOT/test/<class>/<image>, or just class folders), "
    "a CSV manifest or a CoOp split_zhou_<Name>.json"
)
_OOD_HELP = (
    "an out-of-distribution set as NAME=PATH[:subset] (ImageFolder, CSV or JSON); repeat for several. Its "
    "classes are matched to the ID classes by folder key (wnid) or name, or by index for integer folders "
    "(ImageNet-V2: folder k = class k); every class must match. The logits are restricted to the classes it "
    "has (ImageNet-A/-R: 200 of 1000): declared by ':subset' or the names a, r, imagenet-a, imagenet-r, "
    "warned about otherwise"
)
ZEROSHOT_NAME = "zero-shot"
FINETUNED_NAME = "fine-tuned"
REPORT_TRAIN_KEYS = ("model", "pretrained", "mode", "shots", "seed", "templates", "alpha", "beta", "spc", "head",
                     "optimizer", "lr", "epochs", "batch_size", "selection")


def _add_common(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument("--data", required=data_required, default=None, help=_DATA_HELP + (
        "" if data_required else " (for a run directory: default the run's --data)"))
    p.add_argument("--image-root", default=None, help="folder the paths of a JSON split are relative to")
    p.add_argument("--classnames", default=None, help="class names: a text file with one name per line in label "
                   "order (sorted folders), 'folder<TAB>name' lines, or 'imagenet' (CLIP's / CoOp's 1000 ImageNet "
                   "names by wnid); none = names from the data (for a run: the names it was trained with)")
    p.add_argument("--split", default="test", help="which split of --data is the ID evaluation set "
                   "(data with a single split uses it whatever its name; with train/ + val/ and no test/, "
                   "as ImageNet, val/ is the test split)")
    p.add_argument("--split-file", default=None, help="for --data indices/<ds>/shot_K-seed_S.json: the CoOp "
                   "split_zhou_*.json whose test list is evaluated (default: found beside the index file or "
                   "--image-root; for a run: the one it was trained with)")
    p.add_argument("--ood", action="append", default=[], metavar="NAME=PATH", help=_OOD_HELP)
    p.add_argument("--templates", default="openai80", help="prompt templates of the zero-shot head: openai80, "
                   "tip7 or a text file with one template per line containing '{}' (a run uses the zero-shot "
                   "head it saved)")
    add_encoding_arguments(p, batch_size=256)
    p.add_argument("--hash-content", action="store_true", help="hash every image's bytes for the report; "
                   "without it the list of relative paths, labels and file sizes is hashed (reads no images)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the prompt-feature cache")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def register(subparsers) -> None:
    z = subparsers.add_parser(
        "zeroshot",
        help="zero-shot CLIP accuracy on a test split and OOD sets",
        description=(
            "Classify with the class prototypes of the prompt templates (no training) and print\n"
            "top-1/top-5 on the ID split and each --ood set. With --out, write metrics.json and\n"
            "report.md there."
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(z)
    _add_common(z, data_required=True)
    z.add_argument("--out", default=None, help="folder for metrics.json and report.md (default: print only)")
    z.set_defaults(func=run)

    e = subparsers.add_parser(
        "eval",
        help="evaluate a training run (or a zero-shot model) on a test split and OOD sets",
        description=(
            "RUN_OR_MODEL is a run directory written by `fdalign train` or a CLIP model name.\n"
            "For a run, the fine-tuned model and zero-shot CLIP are evaluated side by side and\n"
            "RUN/eval/metrics.json + RUN/eval/report.md are written (the training report is kept).\n"
            "For a model name this is `fdalign zeroshot --model RUN_OR_MODEL`."
        ),
        formatter_class=HelpFormatter,
    )
    e.add_argument("target", metavar="RUN_OR_MODEL", help="run directory, or CLIP model name")
    e.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path (model name only)")
    e.add_argument("--model-config", default=None, help="open_clip model-config JSON (model name only)")
    _add_common(e, data_required=False)
    e.add_argument("--no-zeroshot", action="store_true", help="for a run: skip the zero-shot CLIP baseline "
                   "(saves one pass of the original encoder over every set)")
    e.add_argument("--out", default=None, help="output folder (default: RUN/eval for a run, RUN/eval-heads with "
                   "--heads; none for a model)")
    e.add_argument("--heads", default=None, metavar="LIST", help="cache-model heads to fit and evaluate, comma-"
                   "separated from zeroshot,tip,tip-f,ape,ape-t; each on zero-shot CLIP's encoder and (for a run) "
                   "the fine-tuned one: rows 'Tip', 'Tip + FD-Align', ... Hyper-parameters are searched on the "
                   "val split only")
    e.add_argument("--shots", type=int, default=16, help="with --heads on a model name: cache images per class, "
                   "sampled from --data's train split (a run uses its own K-shot split)")
    e.add_argument("--seed", type=int, default=1, help="with --heads on a model name: seed of the cache sample")
    e.add_argument("--heads-config", default=None, metavar="FILE.yaml", help="search grids and training of the "
                   "heads (keys tip, ape, chunk, views; see README); default: the papers' ranges")
    e.add_argument("--heads-preset", default=None, metavar="NAME", help="'authors': the Tip-Adapter / APE "
                   "authors' settings for the data set (authors:<data set> to name it): logit scale 100, 10-view "
                   "cache, fresh views per epoch, their grids; --heads-config fields override it")
    e.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from fdalign.errors import FDAlignError

    if args.batch_size < 1:
        raise FDAlignError(f"--batch-size must be >= 1 (got {args.batch_size})")
    args.device = _resolve_device(args.device)
    if args.command == "eval" and _is_run_dir(args.target):
        return _eval_run(args)
    if args.command == "eval":
        if Path(args.target).exists() and not args.model_config:
            raise FDAlignError(
                f"{args.target} is not a run directory written by `fdalign train` (no run config found); "
                "pass a run directory or a CLIP model name"
            )
        args.model = args.target
    if args.data is None:
        raise FDAlignError("--data is required when evaluating a model (not a run directory)")
    return _zeroshot(args)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _is_run_dir(target: str) -> bool:
    return Path(target).is_dir()


def _progress(args) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _open_sets(args, id_classnames: list[str] | None = None):
    """Read (not decode) the ID split and the OOD sets, mapped to the ID classes.

    Returns ``(id_split, [(name, ood_split, class_subset or None)])``. Done before any model loads
    so that a wrong path or an unmatched class fails in a second.
    """

    from fdalign.data import load_ood_sets, open_dataset, pick_split
    from fdalign.errors import FDAlignError

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
    from fdalign.errors import FDAlignError

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
            if extra else
            f"--data {data} has {len(have)} classes but the run was trained on {len(want)}; evaluate on the "
            "run's data set"
        )
    mapped, _ = map_ood_to_id(split, list(run_classnames))
    return mapped


def _eval_sets(id_name, id_split, ood, transform) -> dict:
    from fdalign.data import ImageDataset
    from fdalign.eval import EvalSet

    sets = {id_name: EvalSet(id_name, ImageDataset(id_split, transform), None, role="test")}
    for name, split, subset in ood:
        sets[name] = EvalSet(name, ImageDataset(split, transform), subset, role="ood")
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
        backend, classnames, templates, spc=None, cache_dir=False if args.no_cache else None,
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


def _finish(args, metrics, out, *, config, hashes, selection, roles, title, extra=None, classes=None,
            class_table=None) -> int:
    from fdalign.eval import metrics_table, write_metrics, write_report

    print(metrics_table(metrics, roles))
    if out is not None:
        doc = {"roles": roles, "classes": classes, "hashes": hashes, "config": config, "selection": selection,
               **(extra or {})}
        write_metrics(out, metrics, doc)
        write_report(out, metrics, selection=selection, config=config, hashes=hashes, roles=roles, title=title,
                     classes=classes, class_table=class_table)
        print(f"wrote {Path(out) / 'metrics.json'} and {Path(out) / 'report.md'}")
    return 0


def _zeroshot(args) -> int:
    from fdalign.backends import load_clip
    from fdalign.eval import run_evaluation
    from fdalign.prompts import load_templates

    templates = load_templates(args.templates)
    id_name, id_split, ood = _open_sets(args)
    hashes = _hashes(args, id_name, id_split, ood)

    backend = load_clip(args.model, pretrained=args.pretrained, model_config=args.model_config, device=args.device)
    head = _zeroshot_head(backend, id_split.classnames, templates, args)
    sets = _eval_sets(id_name, id_split, ood, backend.preprocess_eval())
    if getattr(args, "heads", None):  # cache-model heads (fdalign.eval.heads): their rows and selections
        from fdalign.eval.heads import evaluate_model_heads

        metrics, heads_selection = evaluate_model_heads(args, backend, head, sets, _progress(args))
    else:
        metrics, heads_selection = run_evaluation(
            {ZEROSHOT_NAME: (backend.image_encoder, head)}, sets, batch_size=args.batch_size, device=args.device,
            precision=args.precision, progress=_progress(args), num_workers=args.num_workers,
        ), None
    config = {
        "model": backend.name, "pretrained": args.pretrained, "model_config": args.model_config,
        "fingerprint": backend.fingerprint, "templates": args.templates, "num_templates": len(templates),
        "data": str(args.data), "split": id_split.name, "ood": list(args.ood), "precision": args.precision,
    }
    selection = heads_selection or {
        "zero-shot": "nothing selected: fixed templates and CLIP weights, no training or validation data"}
    roles = {s.name: s.role for s in sets.values()}
    return _finish(args, metrics, args.out, config=config, hashes=hashes, selection=selection, roles=roles,
                   title=f"Zero-shot {backend.name}", classes=_coverage(id_name, id_split, ood),
                   class_table=_class_table(args, id_split))


def _eval_run(args) -> int:
    from fdalign.errors import FDAlignError
    from fdalign.eval import run_evaluation
    from fdalign.train.run import load_run

    run_dir = Path(args.target)
    loaded = load_run(run_dir, args.device)
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
    hashes = _hashes(args, id_name, id_split, ood)
    _warn_hash_mismatch(run_dir, hashes)

    # row names as in the training report: zero-shot, fine-tuned, wiseft-<alpha>
    encoder = loaded.backend.image_encoder
    models = {}
    if not args.no_zeroshot and loaded.zeroshot_head is not None:
        # a linear probe never trains the encoder, so zero-shot reads the same features
        base_encoder = encoder if cfg.get("mode") == "linear-probe" else loaded.zero_shot_encoder().to(args.device)
        models[ZEROSHOT_NAME] = (base_encoder, loaded.zeroshot_head)
    models[FINETUNED_NAME] = (encoder, loaded.head)
    alpha = (loaded.selection.get("wiseft_alpha") or {}).get("chosen")
    if alpha is not None and 0.0 < float(alpha) < 1.0 and cfg.get("mode") != "linear-probe":
        enc_a, head_a = loaded.wiseft(float(alpha))
        models[f"wiseft-{float(alpha):g}"] = (enc_a.to(args.device), head_a.to(args.device))
    sets = _eval_sets(id_name, id_split, ood, loaded.backend.preprocess_eval())
    if args.heads:  # cache-model heads (fdalign.eval.heads): rows "Tip", "Tip + FD-Align", ...
        from fdalign.eval.heads import evaluate_run_heads

        metrics, selection = evaluate_run_heads(args, loaded, models, sets, _progress(args))
    else:
        metrics = run_evaluation(
            models, sets, batch_size=args.batch_size, device=args.device, precision=args.precision,
            progress=_progress(args), num_workers=args.num_workers,
        )
        selection = _selection_from_run(loaded.selection, cfg)
    roles = {s.name: s.role for s in sets.values()}
    out = Path(args.out) if args.out else run_dir / ("eval-heads" if args.heads else "eval")
    config = {"run": str(run_dir), "data": str(args.data), "split": id_split.name, "ood": list(args.ood),
              "precision": args.precision}
    # the report lists the settings that define the method; metrics.json keeps the whole config
    config.update({k: cfg[k] for k in REPORT_TRAIN_KEYS if k in cfg})
    return _finish(args, metrics, out, config=config, hashes=hashes, selection=selection, roles=roles,
                   title=f"Evaluation of run {run_dir.name}", extra={"train_config": cfg},
                   classes=_coverage(id_name, id_split, ood), class_table=_class_table(args, id_split))


def _as_dict(config) -> dict:
    import dataclasses

    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
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


def _refuse_selection_images(run_dir: Path, id_split, ood) -> None:
    """A set holding the run's validation images (they chose its epoch and WiSE-FT weight) is no test set.

    Compared by resolved path (symlinks followed), e.g. ``--split val`` of a train/val/test folder;
    only files whose name is a selection image's name are resolved, which keeps ImageNet cheap.
    """
    import os

    from fdalign.data import load_split
    from fdalign.errors import FDAlignError

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
