"""``fdalign world render``: the embedded synthetic world as an ImageFolder on disk."""

from __future__ import annotations

import argparse

RENDER_DESCRIPTION = """\
Write the embedded world (24 shapes and digits under 22 nuisance styles) as ordinary image files:
  OUT/train/<class>/*.png  OUT/val/<class>/*.png  OUT/test/<class>/*.png   the ID styles
  OUT/ood/<style>/<class>/*.png                                            one folder per OOD style
  OUT/world.json            settings, the data paths and the SHA-256 of every image (written last)
Deterministic from --seed; run the same command again to finish an interrupted render. Then, e.g.:
  fdalign train --model fdalign-world --data OUT --ood sketch=OUT/ood/sketch --shots 8 --out runs/w8

examples:
  fdalign world render --out world
  fdalign world render --out world_jpeg --id-styles 'jpeg corrupted' --ood-styles sketch blurry
"""


def register(subparsers) -> None:
    from fdalign.cli import HelpFormatter
    from fdalign.world.render import RenderConfig

    p = subparsers.add_parser(
        "world",
        help="the embedded synthetic world: render it as image folders",
        description="The embedded synthetic image-text world.",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="world_command", metavar="ACTION")
    p.set_defaults(func=run, _world_parser=p)
    d = RenderConfig()
    r = sub.add_parser(
        "render",
        help="write the world as an ImageFolder (train/val/test + one folder per OOD style)",
        description=RENDER_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    r.add_argument("--out", required=True, help="output folder (created; an interrupted render is resumed)")
    r.add_argument(
        "--id-styles",
        nargs="+",
        default=list(d.id_styles),
        metavar="STYLE",
        help="styles of train/, val/ and test/ (quote names with spaces: 'jpeg corrupted')",
    )
    r.add_argument(
        "--ood-styles",
        nargs="*",
        default=list(d.ood_styles),
        metavar="STYLE",
        help="held-out styles, one folder each under ood/",
    )
    r.add_argument(
        "--train-per-class",
        type=int,
        default=d.train_per_class,
        help="train/ images per class and ID style (the pool K-shot samples are drawn from)",
    )
    r.add_argument("--val-per-class", type=int, default=d.val_per_class, help="val/ images per class and ID style")
    r.add_argument(
        "--test-per-class",
        type=int,
        default=d.test_per_class,
        help="test/ and each OOD folder: images per class and style",
    )
    r.add_argument("--seed", type=int, default=d.seed, help="render seed")
    r.add_argument(
        "--image-size",
        type=int,
        default=d.image_size,
        help="image side in pixels (the shipped fdalign-world model's input size by default)",
    )
    r.add_argument(
        "--classes", nargs="+", default=None, metavar="CLASS", help="a subset of the world's classes (default: all 24)"
    )
    r.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar")
    r.set_defaults(world_command="render")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "world_command", None) is None:
        args._world_parser.print_help()
        return 2
    from fdalign.io import read_json
    from fdalign.world.render import RenderConfig, render_world

    cfg = RenderConfig(
        id_styles=tuple(args.id_styles),
        ood_styles=tuple(args.ood_styles),
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
        image_size=args.image_size,
        classes=tuple(args.classes) if args.classes else None,
        progress=args.progress,
    )
    outcome: dict = {}
    manifest = render_world(cfg, args.out, outcome)
    doc = read_json(manifest, "world manifest")
    if "checked" in outcome:  # a finished render: every image was checked against its recorded hash
        bad = [
            f"{len(outcome[k])} {k} ({', '.join(outcome[k][:3])}{' ...' if len(outcome[k]) > 3 else ''})"
            for k in ("missing", "changed")
            if outcome[k]
        ]
        print(
            f"{args.out} was already rendered: checked {outcome['checked']} images against {manifest}; "
            + (f"rendered again {outcome['written']}: {'; '.join(bad)}" if bad else "all match")
        )
    else:
        print(f"wrote {outcome['written']} images to {args.out} ({manifest}; {len(doc['files'])} in all)")
    ood = " ".join(f"--ood {k}={args.out}/{v}" for k, v in doc["sets"]["ood"].items())
    print(f"train on it: fdalign train --model fdalign-world --data {args.out} {ood} --out RUN")
    return 0
