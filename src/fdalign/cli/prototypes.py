"""``fdalign prototypes``: encode the prompts once and save class / spurious / corrected prototypes."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter, add_model_arguments

    p = subparsers.add_parser(
        "prototypes",
        help="compute class, spurious and SPC-corrected prototypes from prompt templates",
        description=(
            "Encode every 'template x class' prompt with the frozen CLIP text encoder (once, cached)\n"
            "and save to one safetensors file:\n"
            "  class_prototypes     [C, D]  mean over templates, per class\n"
            "  spurious_prototypes  [M, D]  mean over classes, per template\n"
            "  corrected_prototypes [k, D]  after Spurious Prototype Correction (unless --no-spc)"
        ),
        formatter_class=HelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--classes", required=True, help="text file with one class name per line (line i = label i-1)")
    p.add_argument(
        "--templates",
        default="openai80",
        help="template set (openai80, tip7) or a text file with one template per line, each containing '{}'",
    )
    p.add_argument("--spc-keep", type=int, default=60, help="SPC: templates kept by the IsolationForest")
    p.add_argument("--spc-k", type=int, default=20, help="SPC: KMeans centres (corrected prototypes)")
    p.add_argument("--spc-seed", type=int, default=0, help="SPC: random_state of IsolationForest and KMeans")
    p.add_argument("--no-spc", action="store_true", help="skip SPC; save only class and spurious prototypes")
    p.add_argument("--batch-size", type=int, default=256, help="prompts per text-encoder forward pass")
    p.add_argument("--device", default="cpu", help="torch device for the text encoder, e.g. cpu or cuda")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the prompt-feature cache "
        "($FDALIGN_CACHE/prompt_features, default ~/.cache/fdalign/prompt_features)",
    )
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fdalign.errors import FDAlignError
    from fdalign.prompts import load_classnames, load_templates
    from fdalign.prototypes import build_prototypes, save_prototypes
    from fdalign.spc import SPCConfig

    # read the small files first so a typo fails before a model loads
    classnames = load_classnames(args.classes)
    templates = load_templates(args.templates)
    spc = None if args.no_spc else SPCConfig(keep=args.spc_keep, k=args.spc_k, seed=args.spc_seed)
    if args.batch_size < 1:
        raise FDAlignError(f"--batch-size must be >= 1 (got {args.batch_size})")

    from fdalign.backends import load_clip

    backend = load_clip(args.model, pretrained=args.pretrained, model_config=args.model_config, device=args.device)
    protos = build_prototypes(
        backend,
        classnames,
        templates,
        spc=spc,
        cache_dir=False if args.no_cache else None,
        batch_size=args.batch_size,
    )
    out = save_prototypes(args.out, protos)

    c, d = protos.class_prototypes.shape
    print(f"classes C={c}  templates M={len(templates)}  embed dim D={d}")
    if protos.corrected_prototypes is not None:
        k = protos.corrected_prototypes.shape[0]
        print(f"SPC: kept {len(protos.kept_templates)} templates, {k} corrected prototypes")
        print(f"dropped templates ({len(protos.dropped_templates)}):")
        for t in protos.dropped_templates:
            print(f"  {t}")
    else:
        print("SPC: off (no corrected prototypes)")
    print(f"wrote {out}")
    return 0
