"""Data checks: every image decodes, class balance, and test-set sizes of known benchmarks.

:func:`verify_images` fully decodes each file, because a truncated JPEG/PNG opens fine and only
fails (or, with ``ImageFile.LOAD_TRUNCATED_IMAGES``, silently yields grey pixels) when its pixels
are read. :func:`check_splits` gathers everything into a :class:`CheckReport` for ``fdalign data
check``.
"""

from __future__ import annotations

import logging
import os
import re
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fdalign.data.datasets import LabeledSplit
from fdalign.errors import FDAlignError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Benchmark:
    """Expected size of a benchmark's evaluation set (CoOp's split_zhou test lists; ImageNet val)."""

    name: str
    test_size: int
    num_classes: int


BENCHMARKS = {
    b.name: b
    for b in [
        Benchmark("Caltech101", 2465, 100),
        Benchmark("OxfordPets", 3669, 37),
        Benchmark("StanfordCars", 8041, 196),
        Benchmark("Flowers102", 2463, 102),
        Benchmark("Food101", 30300, 101),
        Benchmark("FGVCAircraft", 3333, 100),
        Benchmark("SUN397", 19850, 397),
        Benchmark("DTD", 1692, 47),
        Benchmark("EuroSAT", 8100, 10),
        Benchmark("UCF101", 3783, 101),
        Benchmark("ImageNet", 50000, 1000),
        Benchmark("ImageNet-V2", 10000, 1000),
        Benchmark("ImageNet-Sketch", 50889, 1000),
        Benchmark("ImageNet-A", 7500, 200),
        Benchmark("ImageNet-R", 30000, 200),
    ]
}


def _bkey(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_ALIASES = {_bkey(n): n for n in BENCHMARKS} | {
    "pets": "OxfordPets",
    "cars": "StanfordCars",
    "flowers": "Flowers102",
    "oxfordflowers": "Flowers102",
    "food": "Food101",
    "aircraft": "FGVCAircraft",
    "fgvc": "FGVCAircraft",
    "sun": "SUN397",
    "describabletextures": "DTD",  # CoOp's split_zhou_DescribableTextures.json
    "caltech": "Caltech101",
    "ucf": "UCF101",
    "eurosat": "EuroSAT",
    "imagenetval": "ImageNet",
    "sketch": "ImageNet-Sketch",
    "imagenetsk": "ImageNet-Sketch",
    "v2": "ImageNet-V2",
    "imagenetv2matchedfrequency": "ImageNet-V2",
    "a": "ImageNet-A",
    "r": "ImageNet-R",
    "rendition": "ImageNet-R",
    "imagenetrendition": "ImageNet-R",
}


def find_benchmark(name: str) -> Benchmark:
    """Look a benchmark up by name, ignoring case and punctuation (``imagenet_v2`` = ``ImageNet-V2``)."""
    key = _ALIASES.get(_bkey(name))
    if key is None:
        raise FDAlignError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def _open_fully(path: str) -> str | None:
    """None if the image decodes completely, else the reason it does not."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def verify_images(
    split: LabeledSplit,
    on_error: str = "raise",
    progress: bool = False,
    workers: int | None = None,
) -> tuple[LabeledSplit, list[str]]:
    """Open and fully decode every image of ``split``.

    Returns ``(split without the bad images, bad paths)``. ``on_error="raise"`` raises
    :class:`FDAlignError` naming the first bad file; ``"skip"`` drops them with a logged warning
    giving their count and the first few paths (``"report"`` drops nothing and only returns them).
    Decoding runs in ``workers`` threads (PIL releases the GIL while decoding).
    """
    if on_error not in ("raise", "skip", "report"):
        raise ValueError(f"on_error must be 'raise', 'skip' or 'report', not {on_error!r}")
    from PIL import ImageFile
    from tqdm.auto import tqdm

    paths = [split.resolve(s) for s in split.samples]
    workers = workers or min(8, os.cpu_count() or 1)
    # A truncated file must fail here even if some other code allowed truncated loading.
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with ThreadPoolExecutor(workers) as pool:
            errors = list(
                tqdm(
                    pool.map(_open_fully, paths),
                    total=len(paths),
                    desc=f"checking {split.name}",
                    unit="img",
                    disable=None if progress else True,  # None: off when not a terminal
                )
            )
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    bad_idx = [i for i, e in enumerate(errors) if e is not None]
    bad = [paths[i] for i in bad_idx]
    if not bad:
        return split, []
    if on_error == "raise":
        i = bad_idx[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise FDAlignError(
            f"image {paths[i]} in split '{split.name}' cannot be read ({errors[i]}){more}; "
            "replace or remove it (`fdalign data check` lists every unreadable image)"
        )
    if on_error == "report":
        return split, bad
    log.warning(
        "skipping %d unreadable image(s) of %d in split '%s': %s%s",
        len(bad),
        len(paths),
        split.name,
        ", ".join(bad[:5]),
        " ..." if len(bad) > 5 else "",
    )
    bad_set = set(bad_idx)
    return split.subset([i for i in range(len(paths)) if i not in bad_set]), bad


# ----------------------------------------------------------------------------------------------
# The full check


@dataclass
class SplitStats:
    name: str
    size: int
    num_classes: int
    min_per_class: int
    max_per_class: int
    mean_per_class: float
    empty_classes: list[str]


@dataclass
class OODCheck:
    """How one ``--ood`` set maps onto the ID classes (``fdalign data check ID --ood NAME=PATH``)."""

    name: str
    images: int
    matched: int  # OOD classes placed on an ID class
    missing: list[str]  # ID classes the set lacks
    unknown: list[str]  # OOD classes (folders) that match no ID class
    declared_subset: bool
    rule: str  # how classes were matched


@dataclass
class CheckReport:
    stats: list[SplitStats] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (where, what)
    notes: list[tuple[str, str]] = field(default_factory=list)  # (where, what): worth knowing, not wrong
    benchmark: Benchmark | None = None
    ood: list[OODCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def split_stats(split: LabeledSplit) -> SplitStats:
    counts = split.class_counts()
    return SplitStats(
        name=f"{split.name} (val/)" if split.source == "val" else split.name,
        size=len(split),
        num_classes=split.num_classes,
        min_per_class=min(counts) if counts else 0,
        max_per_class=max(counts) if counts else 0,
        mean_per_class=statistics.fmean(counts) if counts else 0.0,
        empty_classes=[split.classnames[i] for i, c in enumerate(counts) if c == 0],
    )


def _eval_split(splits: dict[str, LabeledSplit]) -> LabeledSplit | None:
    if "test" in splits:
        return splits["test"]
    if len(splits) == 1:
        return next(iter(splits.values()))
    return splits.get("val")  # ImageNet: the val/ folder is the evaluation set


def _not_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # the OS handed back undecodable bytes as lone surrogates
        return True
    return False


def _check_names(report: CheckReport, key: str, split: LabeledSplit) -> None:
    """File names that are not UTF-8 (a note: every command reads them) and hidden class folders
    holding images (a problem: the loader skips them, e.g. a folder named ``...``)."""
    from pathlib import Path

    from fdalign.data.datasets import hidden_image_dirs

    odd = [split.resolve(s) for s in split.samples if _not_utf8(s.path)]
    if odd:
        shown = ", ".join(ascii(p) for p in odd[:3])
        report.notes.append(
            (
                key,
                f"{len(odd)} file name(s) are not valid UTF-8 ({shown}); fdalign reads them, "
                "and its reports and CSVs write them with \\udcXX escapes",
            )
        )
    root = Path(split.root) if split.root else None
    if root is not None and split.class_keys and (root / split.class_keys[0]).is_dir():
        hidden = hidden_image_dirs(root)
        if hidden:
            report.problems.append(
                (
                    key,
                    f"hidden folder(s) {', '.join(map(repr, hidden[:5]))} hold images but "
                    "are skipped (names starting with '.'); rename them to use them as classes",
                )
            )


def check_splits(
    splits: dict[str, LabeledSplit],
    benchmark: Benchmark | None = None,
    progress: bool = False,
    verify: bool = True,
) -> CheckReport:
    """Decode every image, count classes, compare the evaluation set with ``benchmark``."""
    report = CheckReport(benchmark=benchmark)
    for key, split in splits.items():
        if verify:
            _, bad = verify_images(split, on_error="report", progress=progress)
            for p in bad[:20]:
                report.problems.append((key, f"unreadable image {p}"))
            if len(bad) > 20:
                report.problems.append((key, f"... {len(bad) - 20} more unreadable images"))
        _check_names(report, key, split)
        st = split_stats(split)
        report.stats.append(st)
        if st.size == 0:
            report.problems.append((key, "split has no images"))
        elif st.empty_classes:
            names = ", ".join(st.empty_classes[:5]) + (" ..." if len(st.empty_classes) > 5 else "")
            report.problems.append((key, f"{len(st.empty_classes)} class(es) have no images: {names}"))
    target = _eval_split(splits)
    if benchmark is not None and target is not None:
        n, c = len(target), target.num_classes
        if n != benchmark.test_size:
            diff = n - benchmark.test_size
            what = f"{-diff} missing" if diff < 0 else f"{diff} extra"
            report.problems.append((target.name, f"{n} images but {benchmark.name} has {benchmark.test_size} ({what})"))
        if c != benchmark.num_classes:
            report.problems.append((target.name, f"{c} classes but {benchmark.name} has {benchmark.num_classes}"))
    return report


def check_ood(report: CheckReport, ood_args, id_split: LabeledSplit, progress: bool = False) -> CheckReport:
    """Add every ``NAME=PATH[:subset]`` set's class mapping (and, for a known benchmark name, its
    size) to ``report``: classes matched, ID classes missing, OOD classes unknown, subset declared."""
    from dataclasses import replace

    from fdalign.data.datasets import pick_split
    from fdalign.data.imagenet import subset_benchmark
    from fdalign.data.ood import imagenet_order, match_classes, parse_ood_arg, split_subset_flag, subset_warnings
    from fdalign.data.opener import open_dataset

    names, keys = id_split.classnames, id_split.class_keys
    for text in ood_args:
        name, path = parse_ood_arg(text)
        path, declared = split_subset_flag(path)
        declared = declared or subset_benchmark(name) is not None
        split = replace(pick_split(open_dataset(path, check_files=False), "test"), name=name)
        m = match_classes(split, names, keys)
        if m.by_index == "imagenet":
            rule = "folders are class indices of the ImageNet-1k order (ImageNet-V2)"
        elif m.by_index == "id":
            rule = "folders are class indices of the ID order (ImageNet-V2 convention)"
        else:
            rule = "by wnid" if imagenet_order(keys) and split.class_keys else "by folder key / class name"
        label = [f"{keys[i]} ({names[i]})" if keys and keys[i] != names[i] else names[i] for i in m.missing]
        unknown = m.unknown + m.beyond + [a for a, _ in m.ambiguous]
        report.ood.append(OODCheck(name, len(split), len(m.mapping), label, unknown, declared, rule))
        if m.beyond:
            report.problems.append(
                (
                    name,
                    f"{len(m.beyond)} folder(s) are class indices beyond the class count "
                    f"({', '.join(m.beyond[:5])}); {rule}",
                )
            )
        if m.unknown:
            report.problems.append((name, f"{len(m.unknown)} class(es) match no ID class: {', '.join(m.unknown[:5])}"))
        if m.ambiguous:
            report.problems.append((name, f"class {m.ambiguous[0][0]!r} matches several ID classes"))
        for w in subset_warnings(name, m, names, keys, declared):
            report.problems.append((name, w))
        prepared = find_manifest(path)
        if prepared is not None:
            report.problems += [(name, msg) for msg in prepared_problems({"test": split}, *prepared)]
            report.notes.append((name, prepared_summary(*prepared)))
        else:
            bench = claimed_benchmark(name, len(split))
            if bench is not None and len(split) != bench.test_size:
                report.problems.append((name, f"{len(split)} images but {bench.name} has {bench.test_size}"))
        _, bad = verify_images(split, on_error="report", progress=progress)
        report.problems += [(name, f"unreadable image {p}") for p in bad[:20]]
    return report


def claimed_benchmark(name: str, size: int) -> Benchmark | None:
    """The benchmark an OOD set claims to be, for its size check: its full name (``imagenet-sketch``),
    or a short alias (``sketch``, ``a``) only when its size is within 10% of that benchmark's. A
    short alias alone claims nothing: ``--ood sketch=world/ood/sketch`` is not ImageNet-Sketch."""
    key = _bkey(name)
    target = _ALIASES.get(key)
    if target is None:
        return None
    bench = BENCHMARKS[target]
    full = key in {_bkey(n) for n in BENCHMARKS} or len(key) > 6 and key.startswith("imagenet")
    return bench if full or abs(size - bench.test_size) <= 0.1 * bench.test_size else None


# ----------------------------------------------------------------------------------------------
# Folders written by `fdalign data prepare` (prepared.json) and by `fdalign world render` (world.json)

PREPARED = "prepared.json"


def find_manifest(path) -> tuple[dict, str] | None:
    """``(prepared.json, its path)`` of a prepared folder holding ``path`` (the folder itself, a file in
    it such as its split file, or the sub-folder the presets read, e.g. CUB's images/); None otherwise."""
    from pathlib import Path

    from fdalign.io import read_json

    p = Path(path)
    for folder, sub in ((p.parent, None), (p, None)) if p.is_file() else ((p, ""), (p.parent, p.name)):
        m = folder / PREPARED
        if m.is_file():
            d = read_json(m, "prepare manifest")
            if isinstance(d, dict) and isinstance(d.get("counts"), dict) and sub in (None, d.get("data_dir", "")):
                return d, str(m)
    return None


def prepared_problems(splits: dict[str, LabeledSplit], manifest: dict, where: str) -> list[str]:
    """Each split's images and classes now, against what ``fdalign data prepare`` recorded (and
    checked against the published counts, or the ``--expect-counts`` it was given)."""
    out = []
    counts = manifest["counts"]
    seen = set()
    for key, split in splits.items():
        role = split.source or key  # ImageNet's val/, read as the test split, was prepared as 'val'
        if role not in counts and len(counts) == 1:
            role = next(iter(counts))
        rec = counts.get(role)
        if rec is None:
            continue
        seen.add(role)
        n, c = len(split), sum(1 for x in split.class_counts() if x)
        if (n, c) != (rec["images"], rec["classes"]):
            gap = rec["images"] - n
            what = f"{gap} missing" if gap > 0 else f"{-gap} added"
            out.append(
                f"{role}: {n} images in {c} classes, but {where} recorded {rec['images']} in "
                f"{rec['classes']} when it was prepared ({what}); restore the files, or prepare it again into a new --out"
            )
    for role in sorted(set(counts) - seen):
        out.append(f"split {role} recorded in {where} is not there")
    return out


def prepared_summary(manifest: dict, where: str) -> str:
    """One line: what was prepared and what its counts were checked against."""
    against = manifest.get("expected_from", "?")
    warn = "" if not against.startswith("--expect-counts") else " (NOT the published counts)"
    return (
        f"{manifest.get('title', '?')} by fdalign {manifest.get('fdalign_version', '?')} ({where}); "
        f"counts checked against {against}{warn}"
    )


def format_report(report: CheckReport) -> str:
    """A plain-text table of split sizes and class counts, then the problems (or OK)."""
    lines = []
    if report.benchmark is not None:
        b = report.benchmark
        lines.append(f"benchmark: {b.name} (expected evaluation set: {b.test_size} images, {b.num_classes} classes)")
    head = f"{'split':<16}{'images':>9}{'classes':>9}{'min/cls':>9}{'max/cls':>9}{'mean/cls':>10}"
    lines += [head, "-" * len(head)]
    for s in report.stats:
        lines.append(
            f"{s.name:<16}{s.size:>9}{s.num_classes:>9}{s.min_per_class:>9}{s.max_per_class:>9}"
            f"{s.mean_per_class:>10.1f}"
        )
    lines.append("")
    if report.ood:
        lines.append(f"OOD class mapping onto the {report.stats[0].num_classes if report.stats else '?'} ID classes:")
        w = max([12] + [len(o.name) + 2 for o in report.ood])  # long names must not push the columns
        head = f"{'set':<{w}}{'images':>9}{'matched':>9}{'missing':>9}{'unknown':>9}  subset declared"
        lines += [head, "-" * len(head)]
        for o in report.ood:
            lines.append(
                f"{o.name:<{w}}{o.images:>9}{o.matched:>9}{len(o.missing):>9}{len(o.unknown):>9}  "
                f"{'yes' if o.declared_subset else 'no'}   ({o.rule})"
            )
            if o.missing:
                lines.append(f"    missing: {', '.join(o.missing[:10])}{' ...' if len(o.missing) > 10 else ''}")
            if o.unknown:
                lines.append(f"    unknown: {', '.join(o.unknown[:10])}{' ...' if len(o.unknown) > 10 else ''}")
        lines.append("")
    lines += [f"note: {k}: {msg}" for k, msg in report.notes]
    if report.ok:
        lines.append("OK: no problems found")
    else:
        lines.append(f"{len(report.problems)} problem(s):")
        w = max(len(k) for k, _ in report.problems)
        lines += [f"  {k:<{w}}  {msg}" for k, msg in report.problems]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Class-split benchmarks (N-way K-shot): classes per split and images per class


@dataclass(frozen=True)
class ClassSplitBenchmark:
    name: str
    classes: dict  # role -> number of classes
    per_class: int


MINIIMAGENET = ClassSplitBenchmark("miniImageNet", {"base": 64, "val": 16, "novel": 20}, 600)


def check_class_splits(
    splits: dict[str, LabeledSplit], benchmark: ClassSplitBenchmark | None = None, progress: bool = False
) -> CheckReport:
    """:func:`check_splits` on base/val/novel splits, plus their class counts and images per class."""
    report = check_splits(splits, progress=progress)
    if benchmark is None:
        return report
    for role, want in benchmark.classes.items():
        split = splits.get(role)
        if split is None:
            report.problems.append((role, f"missing: {benchmark.name} has {want} {role} classes"))
            continue
        if split.num_classes != want:
            report.problems.append((role, f"{split.num_classes} classes but {benchmark.name} has {want}"))
        off = [(c, n) for c, n in zip(split.classnames, split.class_counts()) if n != benchmark.per_class]
        if off:
            shown = ", ".join(f"{c} ({n})" for c, n in off[:5])
            report.problems.append((role, f"{len(off)} class(es) without {benchmark.per_class} images: {shown}"))
    return report
