"""``fdalign report``: one report across sweeps and runs (tables, paired differences, published numbers, plots)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Read every finished training run under the given folders (sweep folders from `fdalign sweep`, or
single `fdalign train` run folders) and write one report. It lists every run it used (folder,
key, the settings in which runs differ) and every failed, missing or duplicate run it did not use;
runs with the same data set, shots, seed and method but other settings are kept apart as rows of
their own, never merged. Writes:
  report.md / .html / .csv  mean ± std over seeds per data set and shot count (ID and each OOD set),
                            per-seed paired differences against full fine-tuning, and, where the
                            FD-Align paper published a number for the same setting and model, ours
                            minus theirs; the environment (versions, device) and the split hashes
  summary.json              the same numbers, machine-readable
  *.png                     accuracy vs shots, accuracy per set, the ID-OOD plane with the
                            WiSE-FT curves of fine-tuning and of FD-Align, training curves (CE,
                            KL, LR), t-SNE of image features (zero-shot, fine-tuned, FD-Align)
                            and the spurious distribution of a few images before / after

examples:
  fdalign report sweeps/demo                    (writes into the sweep folder)
  fdalign report sweeps/demo runs/x --out reports/demo-and-x
  fdalign report sweeps/coop sweeps/imagenet --out reports/paper --format md,html,csv
"""


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter

    p = subparsers.add_parser(
        "report",
        help="tables and plots across runs: mean ± std over seeds, paired differences, published numbers",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run folders")
    p.add_argument(
        "--out",
        default=None,
        help="output folder; required unless DIR is a single sweep folder, which "
        "is then the default (the report never writes into a folder it reads unless --out names it)",
    )
    p.add_argument("--format", default="md", help="comma-separated: md, csv, html")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="write the PNG figures")
    p.add_argument(
        "--features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the t-SNE and spurious-distribution figures (load the first seed's models and a few "
        "images per set; skipped when the data are not on this machine)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdalign.experiments.report import write_report

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    written = write_report(args.dirs, args.out, formats=formats, plots=args.plots, features=args.features)
    if "md" in formats:
        text = written[formats.index("md")].read_text(encoding="utf-8")
        head, _, rest = text.partition("\n## ")
        print("\n".join(head.splitlines()[1:]).strip())  # the intro: what was read, what was not used
        print("## " + rest.split("\n## ")[0] if rest else "")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
