"""``fdalign export``: a finished run as a full open_clip or Hugging Face CLIP checkpoint, plus its head and card."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Merge the run's fine-tuned (or WiSE-FT-mixed) image encoder back into the base CLIP, whose text tower
and logit scale stay unchanged, and write it in the backend's own format into the folder --out:

  --format open_clip  open_clip_model.safetensors + open_clip_config.json (open_clip's local-dir layout)
  --format hf         a CLIPModel.save_pretrained folder with the tokenizer and image processor

Beside it: fdalign_head.safetensors (the classifier: weight [C, D], bias [C], class names),
README.md (the model card: base model, data hashes, shots, method, seed, selection, metrics) and
fdalign_export.json. open_clip runs export to open_clip, Hugging Face runs to hf.

example:
  fdalign export runs/eurosat-16 --format open_clip --out exports/eurosat-16
  python -c "import open_clip; open_clip.create_model_and_transforms('local-dir:exports/eurosat-16')"
  fdalign export runs/eurosat-16-hf --format hf --wiseft-alpha selected --out exports/eurosat-hf
"""


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter

    p = subparsers.add_parser(
        "export",
        help="export a run as an open_clip or Hugging Face CLIP checkpoint",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="run directory written by `fdalign train` (training finished)")
    p.add_argument(
        "--format",
        required=True,
        choices=["open_clip", "hf"],
        help="checkpoint format: open_clip for open_clip runs, hf for Hugging Face (hf:) runs",
    )
    p.add_argument("--out", required=True, help="output folder (created; must not exist unless --force)")
    p.add_argument(
        "--wiseft-alpha",
        default=None,
        metavar="A",
        help="export the WiSE-FT mix (1 - A) * zero-shot + A * fine-tuned (encoder and head), A in "
        "[0, 1], or 'selected' for the alpha the run chose on val; none = the fine-tuned weights",
    )
    p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier export")
    p.add_argument(
        "--adapter-only",
        action="store_true",
        help="a --trainable lora run: also write its adapter in peft's own format to OUT/adapter "
        "(PeftModel.from_pretrained(base image tower, OUT/adapter)); the merged checkpoint is written as always",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip reloading the export with plain open_clip / "
        "transformers to check that its image features equal the run's",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdalign.workflows import export_run

    result = export_run(
        args.run,
        args.format,
        args.out,
        wiseft_alpha=args.wiseft_alpha,
        force=args.force,
        verify=not args.no_verify,
        adapter_only=args.adapter_only,
    )
    m = result.manifest
    print(
        f"exported {m['weights']} weights of {args.run} ({m['base_model']['name']}, {len(m['classnames'])} "
        f"classes) as {result.format}:"
    )
    for role, name in m["files"].items():
        print(f"  {role:8s} {result.out / name}")
    if result.wiseft_alpha == 0.0:
        why = "the run chose alpha 0 on val" if args.wiseft_alpha == "selected" else "--wiseft-alpha 0"
        print(f"note: these are the zero-shot CLIP weights ({why}): the export holds none of the fine-tuning")
    if "verified_max_abs_diff" in m:
        print(
            f"reloaded with plain {'open_clip' if result.format == 'open_clip' else 'transformers'}: image "
            f"features match the run's (max abs difference {m['verified_max_abs_diff']:.2g})"
        )
    return 0
