"""``fdalign zeroshot`` and ``fdalign eval``: top-1/top-5 on the in-distribution test split and OOD sets.

Both commands build the same evaluation sets (the ID split plus each ``--ood NAME=PATH`` set, its
classes mapped onto the ID classes) and hand ``{model: (encoder, head)}`` to
:func:`fdalign.eval.run_evaluation`, which encodes each set once per distinct encoder.
"""

from __future__ import annotations

import argparse
import dataclasses

from fdalign.cli import HelpFormatter, add_encoding_arguments, add_model_arguments, add_switches

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


def _add_common(p: argparse.ArgumentParser, data_required: bool) -> None:
    p.add_argument(
        "--data",
        required=data_required,
        default=None,
        help=_DATA_HELP + ("" if data_required else " (for a run directory: default the run's --data)"),
    )
    p.add_argument("--image-root", default=None, help="folder the paths of a JSON split are relative to")
    p.add_argument(
        "--classnames",
        default=None,
        help="class names: a text file with one name per line in label "
        "order (sorted folders), 'folder<TAB>name' lines, or 'imagenet' (CLIP's / CoOp's 1000 ImageNet "
        "names by wnid); none = names from the data (for a run: the names it was trained with)",
    )
    p.add_argument(
        "--split",
        default="test",
        help="which split of --data is the ID evaluation set "
        "(data with a single split uses it whatever its name; with train/ + val/ and no test/, "
        "as ImageNet, val/ is the test split)",
    )
    p.add_argument(
        "--split-file",
        default=None,
        help="for --data indices/<ds>/shot_K-seed_S.json: the CoOp "
        "split_zhou_*.json whose test list is evaluated (default: found beside the index file or "
        "--image-root; for a run: the one it was trained with)",
    )
    p.add_argument("--ood", action="append", default=[], metavar="NAME=PATH", help=_OOD_HELP)
    p.add_argument(
        "--templates",
        default="openai80",
        help="prompt templates of the zero-shot head: openai80, "
        "tip7 or a text file with one template per line containing '{}' (a run uses the zero-shot "
        "head it saved)",
    )
    add_encoding_arguments(p, batch_size=256)
    from fdalign.options import default_workers

    p.set_defaults(num_workers=default_workers())  # evaluation decodes every image: min(cores, 8) by default
    p.add_argument(
        "--pixel-cache",
        default=None,
        metavar="DIR",
        help="keep the decoded, resized and cropped images (uint8) in DIR, so that the next evaluation of "
        "the same images skips decoding (default: $FDALIGN_PIXEL_CACHE, else none)",
    )
    p.add_argument(
        "--pixel-cache-budget",
        type=float,
        default=None,
        metavar="GB",
        help="delete the least recently used pixel-cache entries beyond GB gigabytes",
    )
    p.add_argument("--no-pixel-cache", action="store_true", help="neither read nor write the pixel cache")
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="on CUDA, feed the encoders channels_last images (with --precision bf16: the fast path; "
        "check it keeps top-1 on your model first, see docs/evaluation-at-scale.md)",
    )
    p.add_argument(
        "--jpeg-draft",
        action="store_true",
        help="decode JPEGs at a reduced DCT scale (1/2 to 1/8) that keeps both sides at least the model's "
        "input size: faster on photos over twice that size; the pixels, and so the numbers, differ slightly "
        "from a full decode (measured in docs/evaluation-at-scale.md). Off by default",
    )
    p.add_argument(
        "--hash-content",
        action="store_true",
        help="hash every image's bytes for the report; "
        "without it the list of relative paths, labels and file sizes is hashed (reads no images)",
    )
    add_switches(p)


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
    e.add_argument(
        "--no-zeroshot",
        action="store_true",
        help="for a run: skip the zero-shot CLIP baseline (saves one pass of the original encoder over every set)",
    )
    e.add_argument(
        "--out",
        default=None,
        help="output folder (default: RUN/eval for a run, RUN/eval-heads with --heads; none for a model)",
    )
    e.add_argument(
        "--heads",
        default=None,
        metavar="LIST",
        help="cache-model heads to fit and evaluate, comma-"
        "separated from zeroshot,tip,tip-f,ape,ape-t; each on zero-shot CLIP's encoder and (for a run) "
        "the fine-tuned one: rows 'Tip', 'Tip + FD-Align', ... Hyper-parameters are searched on the "
        "val split only",
    )
    e.add_argument(
        "--shots",
        type=int,
        default=16,
        help="with --heads on a model name: cache images per class, "
        "sampled from --data's train split (a run uses its own K-shot split)",
    )
    e.add_argument("--seed", type=int, default=1, help="with --heads on a model name: seed of the cache sample")
    e.add_argument(
        "--heads-config",
        default=None,
        metavar="FILE.yaml",
        help="search grids and training of the "
        "heads (keys tip, ape, chunk, views; see docs/methods-overview.md); default: the papers' ranges",
    )
    e.add_argument(
        "--heads-preset",
        default=None,
        metavar="NAME",
        help="'authors': the Tip-Adapter / APE "
        "authors' settings for the data set (authors:<data set> to name it): logit scale 100, 10-view "
        "cache, fresh views per epoch, their grids; --heads-config fields override it",
    )
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdalign.eval import metrics_table
    from fdalign.workflows.evaluation import EvalConfig, evaluate_config

    names = {f.name for f in dataclasses.fields(EvalConfig)}
    result = evaluate_config(EvalConfig(**{k: v for k, v in vars(args).items() if k in names}))
    print(metrics_table(result.metrics, result.roles))
    if result.out is not None:
        print(f"wrote {result.out / 'metrics.json'} and {result.out / 'report.md'}")
    return 0
