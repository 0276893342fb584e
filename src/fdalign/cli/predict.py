"""``fdalign predict``: top-k classes and probabilities of new images, from a run or an export, into a CSV."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Classify images with a finished run (its selected model, or --wiseft-alpha) or a folder written
by `fdalign export`. IMAGES are files or folders (walked recursively for image files). The CSV has
one row per image: path, top1, top1_prob, ..., topK, topK_prob, error. Files that cannot be read
are listed and counted, with the reason in the error column; they never stop the run.

example:
  fdalign predict runs/eurosat-16 new_images/ extra.jpg --out preds.csv --topk 3
  fdalign predict exports/eurosat-16 new_images/ --out preds.csv
"""
MAX_LISTED = 20


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter, add_encoding_arguments, add_switches

    p = subparsers.add_parser(
        "predict",
        help="classify new images with a run or an export (top-k CSV)",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "target", metavar="RUN_OR_EXPORT", help="run directory of `fdalign train` or folder of `fdalign export`"
    )
    p.add_argument("images", metavar="IMAGES", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--out", required=True, help="CSV file to write (replaced atomically)")
    p.add_argument(
        "--topk", type=int, default=5, help="classes per image, most probable first (at most the number of classes)"
    )
    p.add_argument(
        "--wiseft-alpha",
        default="selected",
        metavar="A",
        help="for a run: 'selected' (the WiSE-FT mix chosen on val, the run's selected model), 'fine-tuned', "
        "or the WiSE-FT mix with weight A in [0, 1] (default: selected)",
    )
    add_encoding_arguments(p, batch_size=64)
    add_switches(p, cache=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdalign.workflows import predict_images

    pred = predict_images(
        args.target,
        args.images,
        out=args.out,
        topk=args.topk,
        wiseft_alpha=args.wiseft_alpha,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        precision=args.precision,
        progress=not args.no_progress,
    )
    for p, why in list(pred.errors.items())[:MAX_LISTED]:
        print(f"fdalign predict: unreadable: {p} ({why})", file=sys.stderr)
    if pred.num_unreadable > MAX_LISTED:
        print(
            f"fdalign predict: ... and {pred.num_unreadable - MAX_LISTED} more (see the error column of {args.out})",
            file=sys.stderr,
        )
    print(
        f"classified {len(pred.ok)} image(s) with {pred.classifier.name}; {pred.num_unreadable} unreadable; wrote {args.out}"
    )
    return 0
