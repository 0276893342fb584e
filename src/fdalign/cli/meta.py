"""``fdalign meta-train`` and ``fdalign meta-eval``: the paper's N-way K-shot protocol."""

from __future__ import annotations

import argparse
import sys

from fdalign.cli import HelpFormatter, add_encoding_arguments, add_switches

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
    from fdalign.train.meta_config import MetaConfig

    t = subparsers.add_parser(
        "meta-train",
        help="FD-Align on N-way K-shot episodes of base classes, then test novel / cross-domain episodes",
        description=TRAIN_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    t.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML file of options; flags override it")
    add_config_arguments(t, MetaConfig)
    t.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "meta-eval",
        help="N-way K-shot episode accuracy with 95%% intervals (novel classes, cross-domain targets)",
        description=EVAL_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    e.add_argument("target_model", metavar="RUN_OR_MODEL", help="run directory, or CLIP model name")
    e.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path (model name only)")
    e.add_argument("--model-config", default=None, help="open_clip model-config JSON (model name only)")
    e.add_argument(
        "--data",
        default=None,
        help="class splits whose novel split is tested (for a run: default the "
        "run's --data; 'none' to test only --target sets)",
    )
    e.add_argument("--image-root", default=None, help="folder of the images of CSV split files")
    e.add_argument("--classnames", default=None, help="class-names file for --data ('<wnid> <name>' lines)")
    e.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a cross-domain data set used whole; repeat for several",
    )
    _add_episode_options(e)
    e.add_argument("--no-zeroshot", action="store_true", help="for a run: skip zero-shot CLIP")
    e.add_argument("--out", default=None, help="output folder (default: RUN/episodes for a run, none for a model)")
    e.set_defaults(func=run_eval)


def _add_episode_options(p) -> None:
    from fdalign.data.episode_spec import EPISODE_HEADS, ON_SMALL

    p.add_argument("--episodes", type=int, default=2000, help="episodes per setting (per run)")
    p.add_argument("--ways", type=int, default=5, help="N: classes per episode")
    p.add_argument("--shots", type=int, nargs="+", default=[1, 5], help="K: support images per class, one setting each")
    p.add_argument("--queries", type=int, default=15, help="Q: query images per class")
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes")
    p.add_argument("--heads", nargs="+", default=list(EPISODE_HEADS), choices=EPISODE_HEADS, help="heads to score")
    p.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat with new episodes; > 1 also reports the authors' interval 1.96·std of the run means (they used 5)",
    )
    p.add_argument(
        "--on-small",
        default="skip",
        choices=ON_SMALL,
        help="classes with fewer than K+Q images: skip (counted in the report) or error",
    )
    p.add_argument("--weight", type=float, default=0.5, help="weight of the text head in the combined head")
    p.add_argument("--templates", default="openai80", help="prompt templates of the text head")
    add_encoding_arguments(p, batch_size=256)
    add_switches(p)


# ------------------------------------------------------------------------------------------------


def _config(args):
    from fdalign.train.meta_config import MetaConfig

    return MetaConfig.from_args(args).validate()


def run_train(args: argparse.Namespace) -> int:
    from fdalign.workflows import meta_train

    cfg = _config(args)
    run = meta_train(cfg)
    print(f"best epoch {run.best_epoch} (val {cfg.spec.name} accuracy {run.best_val:.2f}%)")
    if run.episodes is None:
        print("no test episodes (--test-episodes 0, or no novel split and no --target)", file=sys.stderr)
        return 0
    return _print(run.episodes)


def run_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from fdalign.workflows.meta import MetaEvalConfig, meta_evaluate_config

    names = {f.name for f in dataclasses.fields(MetaEvalConfig)}
    return _print(meta_evaluate_config(MetaEvalConfig(**{k: v for k, v in vars(args).items() if k in names})))


def _print(result) -> int:
    from fdalign.eval.episodes import episodes_table

    print(episodes_table(result.metrics))
    if any(v for per in result.skipped.values() for v in per.values()):
        print(f"classes skipped for having fewer than K+Q images: {result.skipped}", file=sys.stderr)
    if result.out is not None:
        print(f"wrote {result.out / 'metrics.json'} and {result.out / 'report.md'}")
    return 0
