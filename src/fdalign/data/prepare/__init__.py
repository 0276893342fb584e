"""``fdalign data prepare``: from the archives users download to the layout the presets read.

One module per family registers its preparers (:mod:`.imagenet`: ImageNet, V2, Sketch, A, R,
miniImageNet; :mod:`.coop`: the CoOp sets and FGVC-Aircraft; :mod:`.targets`: the cross-domain targets). :func:`prepare` plans (reading
only annotations and archive listings), checks the plan against the published counts, checks the
free space, then writes (:mod:`.place`) and leaves ``prepared.json`` beside the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fdalign.data.prepare.base import REGISTRY, Download, Options, Preparer, check_counts, read_expect_counts
from fdalign.errors import FDAlignError


def load_all() -> None:
    from fdalign.data.prepare import coop, imagenet, targets  # noqa: F401  (they register themselves)


def get(name: str) -> Preparer:
    load_all()
    key = name.lower().replace("_", "-")
    for p in REGISTRY.values():
        if key in (p.name, p.folder.lower().replace("_", "-")):
            return p
    raise FDAlignError(
        f"no data set {name!r} to prepare; `fdalign data prepare --list` names them: {', '.join(sorted(REGISTRY))}"
    )


@dataclass
class Result:
    folder: Path
    manifest: dict
    notes: list[str]
    already: bool = False


def prepare(
    name: str,
    sources: list[str | Path],
    out: str | Path,
    split_file: str | Path | None = None,
    link: str = "hard",
    expect_counts: str | Path | None = None,
    progress: bool = False,
) -> Result:
    """Prepare data set ``name`` from the ``sources`` into ``out/<folder>``; see the module docstring."""
    from fdalign.data.prepare.place import LINK_MODES, already_prepared, write
    from fdalign.data.prepare.sources import Sources
    from fdalign.io import read_json

    p = get(name)
    if link not in LINK_MODES:
        raise FDAlignError(f"--link {link!r}: choose one of {', '.join(LINK_MODES)}")
    out = Path(out)
    done = already_prepared(p, out)
    if done is not None:
        return Result(out / p.folder, done, [], already=True)
    if not sources:
        raise FDAlignError(f"give the files of {p.title} with --from PATH ... ({p.needs}), or --download where offered")
    if expect_counts is not None:
        expected, against = read_expect_counts(expect_counts), f"--expect-counts {expect_counts}"
    else:
        expected, against = p.expected, f"the published {p.title}"
    src = Sources(sources)
    plan = p.plan(src, Options(split_file=Path(split_file) if split_file else None))
    check_counts(p, plan, expected, against)
    folder = write(p, plan, src, out, link, expected, against, progress=progress)
    return Result(folder, read_json(folder / "prepared.json", "prepare manifest"), plan.notes)


def listing(out: str | Path | None = None) -> str:
    """``fdalign data prepare --list``: per data set the files, the disk, the counts, and the state under ``out``."""
    from fdalign.data.prepare.place import already_prepared

    load_all()
    lines = []
    for p in sorted(REGISTRY.values(), key=lambda q: q.name):
        counts = ", ".join(f"{s} {'?' if n is None else format(n, ',')}/{c}" for s, (n, c) in p.expected.items())
        state = ""
        if out is not None:
            try:
                state = "prepared" if already_prepared(p, Path(out)) else "not prepared"
            except FDAlignError:
                state = "not prepared (foreign folder)"
            state = f"  [{state} under {out}]"
        lines.append(f"{p.name}  ->  {p.folder}/ ({p.title}){state}")
        lines.append(f"    files:   {p.needs}")
        if p.split_help:
            lines.append(f"    split:   --split-file {p.split_help}")
        if p.downloads:
            lines.append(f"    --download: {', '.join(d.filename for d in p.downloads)} (checksums known)")
        lines.append(f"    disk:    about {p.disk_gb:g} GB copied (links: almost none)")
        lines.append(f"    counts:  {counts} (images/classes per split; ?: not published)")
        lines.append(f"    preset reads: {{data_root}}/{p.reads}")
    return "\n".join(lines)


__all__ = ["prepare", "listing", "load_all", "Result", "Preparer", "Download", "REGISTRY", "get"]
