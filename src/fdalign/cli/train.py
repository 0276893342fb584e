"""``fdalign train``: K-shot fine-tuning with FD-Align, WiSE-FT, and ID / OOD evaluation in one run."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Fine-tune a CLIP image encoder on K images per class with FD-Align, then evaluate zero-shot CLIP,
the fine-tuned model and its WiSE-FT interpolations on the ID test split and every --ood set.

Options come from (lowest precedence first) their defaults, --preset, --config FILE.yaml and the
flags given on the command line. The run directory (--out) receives:
  config.yaml            the resolved options (repeat the run with --config <out>/config.yaml)
  splits/train.json      the K-shot images; splits/val.json the validation images
  hashes.json            a hash of every split used (train, val, test, OOD)
  log.csv                one row per optimiser step (lr, ce, kl, loss, images/s)
  checkpoint/last.*      resumable state after each epoch (--resume continues it)
  model/best.safetensors the selected encoder + head (chosen on val, never on test)
  selection.json         what was selected (epoch, WiSE-FT alpha) on which data
  metrics.json report.md top-1 / top-5 on test and OOD sets

example:
  fdalign train --model ViT-B-32 --pretrained openai --data /data/eurosat --shots 16 \\
      --ood shifted=/data/eurosat-shifted --out runs/eurosat-16
  fdalign train --preset released --dataset-name eurosat --model ViT-B-32 --pretrained openai \\
      --data split_zhou_EuroSAT.json --shots 16 --out runs/eurosat-released
  fdalign train --preset released --model ViT-B-32 --pretrained openai --data $DATA/imagenet/images \\
      --classnames imagenet --shots 16 --ood v2=$DATA/imagenetv2 --ood sketch=$DATA/imagenet-sketch \\
      --ood a=$DATA/imagenet-a --ood r=$DATA/imagenet-r --out runs/imagenet-16

ImageNet layout: with train/ and val/ but no test/, val/ is the test split and the validation images
are held out from train/. --classnames imagenet gives CLIP's (= CoOp's) 1000 class names by wnid.
With --data indices/<ds>/shot_K-seed_S.json (the authors' index files) K and the seed come from the
file and the test split from the matching split_zhou_*.json (--split-file, or found beside it).
"""


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter
    from fdalign.train.config import add_config_arguments

    p = subparsers.add_parser(
        "train",
        help="few-shot fine-tune CLIP with FD-Align and evaluate it (ID + OOD)",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--config", default=None, metavar="FILE.yaml",
                   help="YAML file of options (keys as in a run's config.yaml); flags override it")
    p.add_argument("--preset", default=None, choices=["released"],
                   help="start from the authors' released recipe for --dataset-name and --shots "
                        "(SGD, 60 epochs, linear probe then FD-Align (lp-ft, their script's default; add "
                        "--mode fdalign for the variant without the probe), beta 20 in released KL units "
                        "= beta 1 in paper units, trainable head, their LR table)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved options as YAML and exit without training")
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    import yaml

    from fdalign.errors import FDAlignError
    from fdalign.train.config import config_from_args, guess_dataset_name

    index_info = _index_file_shots(args)
    cfg = config_from_args(args, preset=args.preset)
    if cfg.dataset_name is None:
        cfg.dataset_name = guess_dataset_name(cfg.data)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None))
        return 0
    from fdalign.io import run_lock

    with run_lock(cfg.out, "run directory") if cfg.out else _no_lock():  # one process per run directory
        return _run_locked(args, cfg, index_info)


def _no_lock():
    import contextlib

    return contextlib.nullcontext()  # no --out: check_run_request says so


def _run_locked(args, cfg, index_info) -> int:
    import sys
    from pathlib import Path

    from fdalign.cli import check_run_request
    from fdalign.errors import FDAlignError

    check_run_request(cfg)
    out = Path(cfg.out)

    # ---- data: everything that can fail on user input fails before a model loads ----------------
    from fdalign.prompts import load_templates

    templates = load_templates(cfg.templates)
    from fdalign.data import (
        ImageDataset, fewshot_val, load_ood_sets, open_dataset, sample_kshot,
        save_split, split_hash, verify_images,
    )
    from fdalign.data.datasets import classname_table, is_plain_classname_list

    splits = open_dataset(cfg.data, cfg.image_root, cfg.classnames, split_file=cfg.split_file)
    if "train" not in splits:
        raise FDAlignError(f"--data {cfg.data} has no 'train' split (it has: {', '.join(splits)}); "
                           "lay it out as ROOT/train/<class>/<image> (+ ROOT/test/...)")
    if index_info is not None:  # the authors' shots and validation images, exactly
        if "val" not in splits:
            raise FDAlignError(f"index file {cfg.data} has no 'val' part to select the epoch on")
        train_split, val_split = splits["train"], splits["val"]
    else:
        train_split = sample_kshot(splits["train"], cfg.shots, cfg.seed)
        val_split = fewshot_val(splits, cfg.shots, cfg.seed)
    classnames = list(train_split.classnames)
    test_split = splits.get("test")
    _data_warnings(cfg, train_split, test_split)
    ood = load_ood_sets(cfg.ood, classnames, train_split.class_keys, reserved={"test", "val", "train"})

    if cfg.verify_images:
        verify_images(train_split)
        verify_images(val_split)
    hashes = {"train": split_hash(train_split), "val": split_hash(val_split)}
    if cfg.resume and (out / "hashes.json").is_file():
        import json

        old = json.loads((out / "hashes.json").read_text(encoding="utf-8"))
        for k in ("train", "val"):
            if old.get(k) not in (None, hashes[k]):
                raise FDAlignError(f"cannot resume {out}: its {k} images differ from the ones sampled now "
                                   f"(data changed?); start a new --out")
    if test_split is not None:
        hashes["test"] = split_hash(test_split, content=False)
    for name, split, _ in ood:
        hashes[name] = split_hash(split, content=False)
    from fdalign.io import atomic_write_json
    from fdalign.train.distributed import init_from_env

    dist = init_from_env(cfg.device)  # under torchrun: one process per GPU; rank 0 writes every file
    if dist.is_main:
        save_split(train_split, out / "splits" / "train.json")
        save_split(val_split, out / "splits" / "val.json")
        atomic_write_json(out / "hashes.json", hashes)

    # ---- model and prototypes ---------------------------------------------------------------------
    from fdalign.backends import load_clip
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.selection import EvalSplit, check_disjoint
    from fdalign.train.trainer import resolve_device, train

    device = resolve_device(cfg.device)
    progress = cfg.progress and sys.stderr.isatty()
    backend = load_clip(cfg.model, pretrained=cfg.pretrained, model_config=cfg.model_config, device="cpu")
    spc = SPCConfig(keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.spc_seed, renormalize=cfg.spc_renormalize) if cfg.spc else None
    protos = build_prototypes(backend, classnames, templates, spc=spc, progress=progress or None)

    resolved = cfg.resolved(len(train_split))
    if dist.is_main:
        resolved.to_yaml(out / "config.yaml")
    train_ds = ImageDataset(train_split, backend.preprocess_train(scale=tuple(cfg.crop_scale), hflip=cfg.hflip))
    eval_tf = backend.preprocess_eval()
    val_eval = EvalSplit(ImageDataset(val_split, eval_tf), "val", _val_description(cfg, val_split, index_info),
                         files=[str(val_split.resolve(s)) for s in val_split.samples])
    reported = {o.name: o.split for o in ood}
    if test_split is not None:
        reported["test"] = test_split
    check_disjoint(val_eval, {n: [sp.resolve(s) for s in sp.samples] for n, sp in reported.items()})
    if dist.is_main:
        print(f"training {backend.name} on {len(train_split)} images ({len(classnames)} classes x {cfg.shots} shots), "
              f"validating on {len(val_split)}; run directory {out}", file=sys.stderr)
    # names the training images and their augmentation: with --f0-cache, it keys f0's cached answers
    data_key = f"{hashes['train']}|crop {list(cfg.crop_scale)}|hflip {cfg.hflip}|{backend.image_spec}"
    result = train(backend, train_ds, val_eval, protos, resolved, out, progress=progress, data_key=data_key)
    if not dist.is_main:
        return 0  # evaluation and reports are rank 0's

    # ---- WiSE-FT: interpolations of zero-shot and fine-tuned, alpha chosen on val ----------------
    models, chosen = _wiseft_rows(result, resolved, val_eval, device)
    result.selection.save(out / "selection.json")
    precision = resolved.precision if device.type == "cuda" else "fp32"
    from fdalign.eval import EvalSet, run_evaluation, write_metrics, write_report

    # ---- evaluation on test and OOD (reported, never used to choose) ----------------------------
    sets, notes = {}, []
    if test_split is not None:
        sets["test"] = EvalSet("test", ImageDataset(test_split, eval_tf), None, role="test")
    else:  # never let the split that chose the epoch stand in for a test accuracy (warned before training)
        notes.append(_NO_TEST.format(data=cfg.data))
    for name, split, subset in ood:
        sets[name] = EvalSet(name, ImageDataset(split, eval_tf), subset, role="ood")
    metrics = {}
    if sets:
        metrics = run_evaluation(models, sets, batch_size=resolved.eval_batch_size, device=device,
                                 precision=precision, progress=progress, num_workers=resolved.num_workers)
    roles = {s.name: s.role for s in sets.values()}
    classes = _class_coverage(len(classnames), test_split, ood)
    selection = dict(result.selection.to_json())
    selection["test / OOD sets"] = "only evaluated, never used to select anything"
    train_info = {"best_epoch": result.best_epoch, "val_top1_per_epoch": result.val_top1, "steps": result.steps,
                  "seconds": round(result.seconds, 1), "wiseft_alpha_chosen": chosen,
                  "fine-tuned": "the selected epoch's encoder + head", "zero-shot": "CLIP with the prompt prototypes"}
    extra = {"roles": roles, "classes": classes, "hashes": hashes, "model": backend.name,
             "config": resolved.to_dict(), "selection": selection, "train": train_info}
    if index_info is not None:
        extra["index_file"] = {"path": index_info.path, "shots": index_info.shots, "seed": index_info.seed}
    if test_split is None:
        extra["test"] = notes[0]
    write_metrics(out, metrics, extra)
    summary = {k: getattr(resolved, k) for k in ("model", "pretrained", "dataset_name", "mode", "shots", "seed",
                                                 "templates", "alpha", "beta", "kl_direction", "spc", "head",
                                                 "optimizer", "lr", "weight_decay", "epochs", "batch_size")}
    if index_info is not None:
        summary["index file"] = f"{index_info.path} (K = {index_info.shots}, its seed {index_info.seed})"
    table = classname_table(train_split) if is_plain_classname_list(cfg.classnames) else None
    write_report(out, metrics, selection=selection, config=summary, hashes=hashes, roles=roles,
                 title=f"FD-Align: {backend.name} on {resolved.dataset_name or cfg.data}, {cfg.shots}-shot",
                 classes=classes, class_table=table, notes=notes)
    from fdalign.eval import metrics_table

    if metrics:
        print(metrics_table(metrics, roles))
    print(f"best epoch {result.best_epoch} (val top-1 {result.best_val_top1:.2f}); WiSE-FT alpha on val: {chosen:g}")
    print(f"wrote {out / 'metrics.json'} and {out / 'report.md'}")
    return 0


def _wiseft_rows(result, resolved, val_eval, device):
    """``(models, alpha chosen on val)``: zero-shot, fine-tuned and every WiSE-FT mix as
    ``{row name: (encoder, head)}``, on ``device``; the choice is recorded in ``result.selection``."""
    import copy

    from fdalign.eval.features import extract_features
    from fdalign.eval.metrics import topk_accuracy
    from fdalign.eval.pipeline import apply_head
    from fdalign.train.selection import select_by
    from fdalign.train.wiseft import alpha_name, wiseft_model

    ft_encoder, ft_head, zs_head = result.encoder, result.head, result.zeroshot_head
    if resolved.mode != "linear-probe":
        zs_encoder = copy.deepcopy(ft_encoder)
        zs_encoder.load_state_dict(result.zeroshot_encoder_state)
    else:  # the probe never touched the encoder: share it, so its features are computed once
        zs_encoder = ft_encoder
    alphas = sorted(set(float(a) for a in resolved.wiseft_alphas))
    models = {"zero-shot": (zs_encoder, zs_head), "fine-tuned": (ft_encoder, ft_head)}
    for a in alphas:
        if a not in (0.0, 1.0):
            models[alpha_name(a)] = wiseft_model(zs_encoder, ft_encoder, zs_head, ft_head, a)
    by_alpha = {a: models["zero-shot" if a == 0.0 else "fine-tuned" if a == 1.0 else alpha_name(a)] for a in alphas}
    precision = resolved.precision if device.type == "cuda" else "fp32"

    def val_top1(alpha, ds):
        enc, head = by_alpha[alpha]
        feats, labels = extract_features(enc, ds, batch_size=resolved.eval_batch_size, device=device,
                                         precision=precision, progress=False)
        return topk_accuracy(apply_head(head, feats), labels, ks=(1,))[1]

    for enc, head in models.values():
        enc.to(device)
        head.to(device)
    chosen, _ = select_by("wiseft_alpha", alphas, val_top1, val_eval, result.selection)
    return models, chosen


_NO_TEST = ("no test accuracy exists: {data} has no test split, and the val split chose the epoch and the WiSE-FT "
            "weight, so it is not reported as one. Give data with a test split (for the authors' index files: "
            "--split-file split_zhou_<Name>.json)")


def _index_file_shots(args):
    """K and seed from the authors' index file given as --data: an explicit --shots must agree.

    Called before the config is resolved, because ``--preset released`` picks its LR by K.
    """
    import yaml

    from fdalign.data.fewshot import index_file_info
    from fdalign.errors import FDAlignError

    from_file = {}
    if getattr(args, "config", None):
        from pathlib import Path

        try:
            from_file = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            from_file = {}  # config_from_args reports it with the file's name
        if not isinstance(from_file, dict):
            from_file = {}
    data = getattr(args, "data", None) or from_file.get("data")
    info = index_file_info(data) if data else None
    if info is None:
        return None
    given = getattr(args, "shots", None)
    given = from_file.get("shots") if given is None else given
    if given is not None and int(given) != info.shots:
        raise FDAlignError(
            f"--shots {given} disagrees with the index file {data}, which holds {info.shots} images per class; "
            f"K is taken from the file: drop --shots, or pass the shot_{given}-seed_S.json file"
        )
    args.shots = info.shots
    if info.seed is not None and getattr(args, "seed", None) is None and "seed" not in from_file:
        args.seed = info.seed
    return info


def _val_description(cfg, val_split, index_info) -> str:
    if index_info is not None:
        return f"val (the index file's val part, {len(val_split)} images)"
    where = "val/" if val_split.name == "val" else "train/ (held out from the training shots)"
    return f"val ({min(cfg.shots, 4)}-shot of {where}, {len(val_split)} images)"


def _data_warnings(cfg, train_split, test_split) -> None:
    """Say what the layout implies before a long run: val/ as the test set, wnid prompts."""
    import sys

    from fdalign.data.imagenet import wnid_name_warning

    if test_split is not None and test_split.source == "val":
        print(f"fdalign train: note: {cfg.data} has train/ and val/ but no test/: val/ is the test split "
              "(ImageNet's protocol) and the validation images are held out from train/", file=sys.stderr)
    if test_split is None:
        print(f"fdalign train: warning: {_NO_TEST.format(data=cfg.data)}", file=sys.stderr)
    w = wnid_name_warning(train_split.classnames, f"--data {cfg.data}")
    if w:
        print(f"fdalign train: warning: {w}", file=sys.stderr)


def _class_coverage(num_classes: int, test_split, ood) -> dict:
    from fdalign.eval.metrics import class_coverage

    out = {"test": class_coverage(num_classes, None)} if test_split is not None else {}
    out.update({o.name: o.coverage() for o in ood})
    return out
