"""``fdalign data``: check a data set, or write the K-shot split of a seed."""

from __future__ import annotations

import argparse

from fdalign.cli import HelpFormatter, add_switches

_DATA_HELP = (
    "an ImageFolder root (ROOT/train/<class>/<image>, ROOT/test/...; or just class folders), "
    "a CSV manifest (path,label[,domain][,split]) or a CoOp split_zhou_<Name>.json"
)


_CLASSNAMES_HELP = (
    "class names: a text file with one name per line in label order (sorted folder order), or "
    "'folder<TAB>name' lines, or 'imagenet' for CLIP's / CoOp's 1000 ImageNet names keyed by wnid"
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="check a data set or sample its few-shot split",
        description="Inspect data sets before training on them.",
        formatter_class=HelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(func=run, _data_parser=p)

    c = sub.add_parser(
        "check",
        help="decode every image, count classes, compare with the known benchmark size",
        description=(
            "Decode every image, print split sizes and per-class counts, and for known benchmarks\n"
            "(the CoOp data sets, ImageNet, ImageNet-V2/-Sketch/-A/-R) compare the evaluation set\n"
            "with its expected size. Exit status: 0 all good, 1 problems found, 2 unusable input."
        ),
        formatter_class=HelpFormatter,
    )
    c.add_argument("data", metavar="ROOT_OR_SPLIT", help=_DATA_HELP)
    c.add_argument(
        "--image-root",
        default=None,
        help="folder the paths of a JSON split are relative to "
        "(if not given: the JSON's folder, or its sub-folder holding the first listed image)",
    )
    c.add_argument(
        "--benchmark",
        default=None,
        help="expected benchmark, e.g. OxfordPets, ImageNet-Sketch "
        "(if not given: taken from a split_zhou_<Name>.json file name)",
    )
    c.add_argument("--classnames", default=None, help=_CLASSNAMES_HELP)
    c.add_argument(
        "--ood",
        action="append",
        default=[],
        metavar="NAME=PATH[:subset]",
        help="also check how an OOD set maps onto the ID classes: classes matched, ID classes "
        "missing, OOD classes unknown, subset declared (':subset', or a name a / r / "
        "imagenet-a / imagenet-r); a known NAME (v2, sketch, a, r) also checks its size. Repeatable",
    )
    add_switches(c, cache=False)
    c.set_defaults(data_command="check")

    _register_prepare(sub)

    s = sub.add_parser(
        "sample",
        help="write the K-shot training and validation splits of a seed as JSON",
        description=(
            "Write DIR/train.json and DIR/val.json (fdalign split files) holding the K-shot images\n"
            "of a seed; pass them as --data to replay exactly those images."
        ),
        formatter_class=HelpFormatter,
    )
    s.add_argument("data", metavar="ROOT_OR_SPLIT", help=_DATA_HELP)
    s.add_argument("--shots", type=int, required=True, help="images per class (K)")
    s.add_argument("--seed", type=int, default=1, help="sampling seed")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--image-root", default=None, help="folder the paths of a JSON split are relative to")
    s.add_argument("--classnames", default=None, help=_CLASSNAMES_HELP)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "data_command", None) is None:
        args._data_parser.print_help()
        return 2
    if args.data_command == "check":
        return _check(args)
    if args.data_command == "prepare":
        return _prepare(args)
    return _sample(args)


def _check(args: argparse.Namespace) -> int:
    from fdalign.data.check import check_splits, find_benchmark, format_report

    if _is_class_split_data(args):
        return _check_class_splits(args)
    from fdalign.data.datasets import benchmark_from_filename
    from fdalign.data.opener import open_dataset
    from fdalign.errors import FDAlignError

    if args.benchmark:
        bench = find_benchmark(args.benchmark)
    else:
        guess = benchmark_from_filename(args.data)
        try:
            bench = find_benchmark(guess) if guess else None
        except FDAlignError:
            bench = None  # an unknown split_zhou name is not an error, just nothing to compare
    from pathlib import Path

    from fdalign.data.check import find_manifest, prepared_problems, prepared_summary

    _refuse_unfinished(args.data)
    prepared = find_manifest(args.data)
    if prepared is not None and prepared[0].get("split_file") and Path(args.data).is_dir():
        args.data = str(Path(args.data) / prepared[0]["split_file"])  # a CoOp folder is read through its split
    if prepared is not None and not args.benchmark:
        bench = None  # prepare checked the published counts; the data is compared with what it recorded
    # Missing files are reported as problems below rather than stopping the load.
    splits = open_dataset(args.data, image_root=args.image_root, classnames=args.classnames, check_files=False)
    report = check_splits(splits, benchmark=bench, progress=not args.no_progress)
    if prepared is not None:
        report.notes.append(("prepared", prepared_summary(*prepared)))
        report.problems += [("prepared", msg) for msg in prepared_problems(splits, *prepared)]
    if args.ood:
        from fdalign.data.check import check_ood

        id_split = splits.get("train") or next(iter(splits.values()))
        check_ood(report, args.ood, id_split, progress=not args.no_progress)
    _warn_wnid_names(splits)
    print(format_report(report))
    return 0 if report.ok else 1


def _refuse_unfinished(data: str) -> None:
    """An interrupted `world render` or `data prepare` is not data to check: say how to finish it."""
    from pathlib import Path

    from fdalign.errors import FDAlignError
    from fdalign.world.render import MANIFEST, SPEC_FILE

    p = Path(data)
    if p.is_dir() and (p / SPEC_FILE).is_file() and not (p / MANIFEST).is_file():
        raise FDAlignError(
            f"{p} is an unfinished world render ({SPEC_FILE} without {MANIFEST}): its test/ is "
            "incomplete; run the same `fdalign world render` command again to finish it"
        )
    for q in [p, *p.parents][:3]:  # the folder, or a split file / sub-folder inside it
        partial = q.parent / f".{q.name}.partial"
        if not q.exists() and partial.is_dir():
            raise FDAlignError(
                f"{q} is not there yet: `fdalign data prepare` was interrupted ({partial} holds "
                "what it wrote); run the same command again to finish it"
            )


def _warn_wnid_names(splits) -> None:
    import sys

    from fdalign.data.imagenet import wnid_name_warning

    first = next(iter(splits.values()))
    w = wnid_name_warning(first.classnames, "this data set")
    if w:
        print(f"fdalign data: warning: {w}", file=sys.stderr)


def _names_miniimagenet(text: str | None) -> bool:
    return "miniimagenet" in (text or "").lower().replace("-", "").replace("_", "")


def _is_class_split_data(args: argparse.Namespace) -> bool:
    """miniImageNet-style CSVs, base/ val/ novel/ folders, or --benchmark miniImageNet."""
    from pathlib import Path

    p = Path(args.data)
    return _names_miniimagenet(args.benchmark) or (
        p.is_dir() and ((p / "test.csv").is_file() or (p / "train.csv").is_file() or (p / "base").is_dir())
    )


def _check_class_splits(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fdalign.data.check import (
        MINIIMAGENET,
        check_class_splits,
        find_manifest,
        format_report,
        prepared_problems,
        prepared_summary,
    )
    from fdalign.data.episodes import load_class_splits

    splits = load_class_splits(args.data, args.image_root, args.classnames)
    prepared = find_manifest(args.data)
    mini = _names_miniimagenet(args.benchmark) or (
        args.benchmark is None and prepared is None and _names_miniimagenet(Path(args.data).resolve().name)
    )
    report = check_class_splits(splits, MINIIMAGENET if mini else None, progress=not args.no_progress)
    if prepared is not None:  # prepared from train.csv / val.csv / test.csv
        as_csv = {"base": "train", "val": "val", "novel": "test"}
        report.notes.append(("prepared", prepared_summary(*prepared)))
        report.problems += [
            ("prepared", m) for m in prepared_problems({as_csv.get(k, k): v for k, v in splits.items()}, *prepared)
        ]
    if mini:
        print("benchmark: miniImageNet (expected 64/16/20 base/val/novel classes, 600 images each)")
    print(format_report(report))
    return 0 if report.ok else 1


def _sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fdalign.data.fewshot import sample_fewshot, save_split
    from fdalign.data.opener import open_dataset

    splits = open_dataset(args.data, image_root=args.image_root, classnames=args.classnames)
    shots = sample_fewshot(splits, args.shots, args.seed)
    out = Path(args.out)
    for name, split in shots.items():
        save_split(split, out / f"{name}.json")
        print(f"{name}: {len(split)} images ({split.name}) -> {out / f'{name}.json'}")
    return 0


_PREPARE_DESCRIPTION = """\
Turn the archives of a data set, as its publishers ship them, into the layout the shipped presets
read under --out (= the sweep's --data-root). Archives are read in place (tar, tar of tars, zip,
tar.gz) or as extracted folders; images from folders are linked, not copied (--link). Annotations
are parsed and checked before anything is written: the images per split and class against the
published counts, CoOp's split file entry by entry, the free disk space. Files are placed
atomically into OUT/.<folder>.partial, which becomes OUT/<folder> with its prepared.json when
complete: run the same command again to continue an interrupted prepare.

examples:
  fdalign data prepare --list --out /data
  fdalign data prepare imagenet --from ILSVRC2012_img_train.tar ILSVRC2012_img_val.tar \\
      ILSVRC2012_devkit_t12.tar.gz --out /data
  fdalign data prepare oxford_pets --download --split-file split_zhou_OxfordPets.json --out /data/coop
"""


def _download(args: argparse.Namespace) -> list[str]:
    """--download: the files with known checksums, and CoOp's split file (by its Drive id) unless
    --split-file is given; from --mirror (or $FDALIGN_MIRROR) when set."""
    import os
    from pathlib import Path

    from fdalign.data.prepare import get
    from fdalign.data.prepare.download import MIRROR_ENV, fetch, fetch_split
    from fdalign.errors import FDAlignError

    p = get(args.name)
    folder = Path(args.download_dir or Path(args.out) / "downloads")
    mirror = args.mirror or os.environ.get(MIRROR_ENV) or None
    wants_split = p.split_drive_id is not None and not args.split_file
    if not p.downloads and not wants_split:
        raise FDAlignError(f"{p.title} has no download with a known checksum; get {p.needs} and pass them with --from")
    if wants_split:
        args.split_file = str(fetch_split(p.split_file, p.split_drive_id, folder, not args.no_progress, mirror))
        print(f"note: {p.split_file} from {mirror or 'CoOp' + chr(39) + 's Google Drive'} -> {args.split_file}")
    return [str(f) for f in fetch(p.downloads, folder, progress=not args.no_progress, mirror=mirror)]


def _register_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="lay out a downloaded data set as the presets read it (prepared.json)",
        description=_PREPARE_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="the data set (see --list)")
    p.add_argument(
        "--from",
        dest="sources",
        nargs="+",
        default=[],
        metavar="PATH",
        help="the downloaded archives or their extracted folders",
    )
    p.add_argument("--out", default=None, help="the data root: NAME goes into OUT/<folder> (see --list)")
    p.add_argument("--split-file", default=None, help="CoOp's split_zhou_<Name>.json, for the CoOp data sets")
    p.add_argument(
        "--link",
        choices=["hard", "symbolic", "copy"],
        default="hard",
        help="how images from folders are placed (archives are always extracted); hard falls back to "
        "a copy across file systems",
    )
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="read the files symbolic links inside a --from folder point to (by default links are "
        "ignored and counted: a link may point anywhere on the disk)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="fetch the files first (where --list says so), resumably, checking their checksums; for a CoOp "
        "set without --split-file, also its split file from CoOp's Google Drive (gdown)",
    )
    p.add_argument("--download-dir", default=None, help="where --download keeps the files; None: OUT/downloads")
    p.add_argument(
        "--mirror",
        default=None,
        metavar="URL",
        help="with --download: fetch each file as URL/<file name> instead of from its publisher (checksums "
        "still checked); also the environment variable FDALIGN_MIRROR",
    )
    p.add_argument(
        "--expect-counts",
        default=None,
        metavar="FILE",
        help='JSON {"split": [images, classes]} replacing the published counts, for a subset or a '
        "miniature copy (prepared.json records it; data check says so)",
    )
    p.add_argument("--list", action="store_true", help="list the data sets: files, disk, counts, prepared or not")
    add_switches(p, cache=False)
    p.set_defaults(data_command="prepare")


def _prepare(args: argparse.Namespace) -> int:
    import sys

    from fdalign.data.prepare import listing, prepare
    from fdalign.errors import FDAlignError

    if args.list:
        print(listing(args.out))
        return 0
    if not args.name or not args.out:
        raise FDAlignError("fdalign data prepare needs NAME and --out (or --list to see the names)")
    sources = list(args.sources)
    if args.download:
        sources += _download(args)
    res = prepare(
        args.name,
        sources,
        args.out,
        split_file=args.split_file,
        link=args.link,
        expect_counts=args.expect_counts,
        progress=not args.no_progress,
        follow_symlinks=args.follow_symlinks,
    )
    m = res.manifest
    for note in res.notes:
        print(f"note: {note}")
    counts = ", ".join(f"{s} {c['images']} images / {c['classes']} classes" for s, c in m["counts"].items())
    if res.already:
        print(f"{res.folder} is already prepared ({counts}); prepared.json lists its sources")
        return 0
    placed = ", ".join(f"{k} {v}" for k, v in m["placed"].items() if v)
    print(f"prepared {m['title']} in {res.folder}: {counts}; checked against {m['expected_from']}; files: {placed}")
    if m["expected_from"].startswith("--expect-counts"):
        print("warning: the published counts were NOT checked (--expect-counts)", file=sys.stderr)
    return 0
