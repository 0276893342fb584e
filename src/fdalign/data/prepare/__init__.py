"""``fdalign data prepare``: from the archives users download to the layout the presets read.

One module per family registers its preparers (:mod:`.imagenet`: ImageNet, V2, Sketch, A, R,
miniImageNet; :mod:`.coop`: the CoOp sets and FGVC-Aircraft; :mod:`.targets`: the cross-domain targets). :func:`prepare` plans (reading
only annotations and archive listings), checks the plan against the published counts, checks the
free space, then writes (:mod:`.place`) and leaves ``prepared.json`` beside the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fdalign.data.prepare.base import (
    REGISTRY,
    Download,
    Options,
    Plan,
    Preparer,
    check_counts,
    first,
    read_expect_counts,
)
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
    follow_symlinks: bool = False,
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
    if expect_counts is not None:  # recorded absolute: prepared.json is read from anywhere
        expected, against = read_expect_counts(expect_counts), f"--expect-counts {Path(expect_counts).resolve()}"
    else:
        expected, against = p.expected, f"the published {p.title}"
    src = Sources(sources, follow_symlinks=follow_symlinks)
    plan = p.plan(src, Options(split_file=Path(split_file) if split_file else None))
    plan.notes += dropped_notes(src.dropped(), follow_symlinks) + duplicate_notes(plan)
    try:
        check_counts(p, plan, expected, against)
    except FDAlignError as e:
        found = what_was_found(p, src)
        raise FDAlignError(f"{e}{found}") from None
    folder = write(p, plan, src, out, link, expected, against, progress=progress)
    return Result(folder, read_json(folder / "prepared.json", "prepare manifest"), plan.notes)


def what_was_found(p: Preparer, src) -> str:
    """`` — expected ...; found ...`` for a preparer that says its layout: which other data set's
    files were given instead ("this looks like ImageNet-R: ..."), or what the files are named."""
    if not p.layout:
        return ""
    load_all()
    names = [n for s in src.list for n in s.members]
    for q in REGISTRY.values():
        if q is p or not q.signature:
            continue
        hits = [n for m, _ in src.find(q.signature) for n in [m.name]]
        mine = len(src.find(p.signature)) if p.signature else 0
        if len(hits) > mine:
            return (
                f" — expected {p.layout}; found {len(hits)} files like {hits[0]}: this looks like {q.looks}; "
                f"prepare it with `fdalign data prepare {q.name}`"
            )
    shown = first(sorted(names), 3) if names else "no files"
    return f" — expected {p.layout}; found {len(names)} files: {shown}"


def dropped_notes(dropped: dict[str, list[str]], follow_symlinks: bool = False) -> list[str]:
    """One line per reason members were dropped while listing the sources."""
    from fdalign.data.prepare.sources import DROP_REASONS

    notes = []
    for why, names in sorted(dropped.items()):
        hint = " (--follow-symlinks reads the files they point to)" if why == "link" and not follow_symlinks else ""
        notes.append(f"ignored {len(names)} {DROP_REASONS[why]}{hint}: {first(names, 3)}")
    return notes


def duplicate_notes(plan: Plan) -> list[str]:
    if not plan.duplicates:
        return []
    used, not_used = plan.duplicates[0]
    return [
        f"{len(plan.duplicates)} images were found twice in the --from files and are counted once: used "
        f"{used}, not {not_used}{' (and so on)' if len(plan.duplicates) > 1 else ''}"
    ]


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
        if p.split_drive_id:
            lines.append(f"    --download: {p.split_file} from CoOp's Google Drive (id {p.split_drive_id}) with gdown")
        lines.append(f"    disk:    about {p.disk_gb:g} GB copied (links: almost none)")
        lines.append(f"    counts:  {counts} (images/classes per split; ?: not published)")
        lines.append(f"    preset reads: {{data_root}}/{p.reads}")
    return "\n".join(lines)


__all__ = [
    "dropped_notes",
    "duplicate_notes",
    "prepare",
    "listing",
    "load_all",
    "Result",
    "Preparer",
    "Download",
    "REGISTRY",
    "get",
]
