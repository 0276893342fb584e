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
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE.yaml",
        help="YAML file of options (keys as in a run's config.yaml); flags override it",
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=["released"],
        help="start from the authors' released recipe for --dataset-name and --shots "
        "(SGD, 60 epochs, linear probe then FD-Align (lp-ft, their script's default; add "
        "--mode fdalign for the variant without the probe), beta 20 in released KL units "
        "= beta 1 in paper units, trainable head, their LR table)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved options as YAML and exit without training"
    )
    add_config_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    import yaml

    from fdalign.train.config import config_from_args, guess_dataset_name

    _index_file_shots(args)
    cfg = config_from_args(args, preset=args.preset)
    if cfg.dataset_name is None:
        cfg.dataset_name = guess_dataset_name(cfg.data)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None))
        return 0
    from fdalign.eval import metrics_table
    from fdalign.workflows import finetune

    run_ = finetune(cfg)
    if not run_.models:
        return 0  # not rank 0 of a torchrun job: rank 0 evaluates and reports
    if run_.metrics:
        print(metrics_table(run_.metrics, run_.roles))
        from fdalign.experiments.protocols import base_novel_lines

        for line in base_novel_lines(run_.metrics):
            print(line)
    print(
        f"best epoch {run_.best_epoch} (val top-1 {run_.best_val_top1:.2f}); "
        f"WiSE-FT alpha on val: {run_.wiseft_alpha:g}"
    )
    for note in run_.notes:
        print(f"note: {note}")
    print(f"wrote {run_.paths['metrics']} and {run_.paths['report']}")
    return 0


def _index_file_shots(args):
    """K and seed from the authors' index file given as --data: an explicit --shots must agree.

    Called before the config is resolved, because ``--preset released`` picks its LR by K.
    """
    from fdalign.options import read_yaml
    from fdalign.workflows.kshot import index_file_of

    from_file = {}
    if getattr(args, "config", None):
        # the bounded reader: an alias bomb or a duplicate key is refused here, in one line, before any use
        from_file = read_yaml(args.config, "config file") or {}
        if not isinstance(from_file, dict):
            from_file = {}
    given = getattr(args, "shots", None)
    info = index_file_of(
        getattr(args, "data", None) or from_file.get("data"), from_file.get("shots") if given is None else given
    )
    if info is None:
        return None
    args.shots = info.shots
    if info.seed is not None and getattr(args, "seed", None) is None and "seed" not in from_file:
        args.seed = info.seed
    return info
