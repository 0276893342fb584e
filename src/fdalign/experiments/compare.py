"""The robust fine-tuning comparison of a report (issue 27): one table per data set of ID / OOD mean / novel / HM
per method, the paired differences of every method against the reference (FD-Align), the rows chosen on val,
the best method on the ID-OOD frontier, and the extra time per step each method costs against fine-tuning.

It reads what :func:`fdalign.experiments.report.build_groups` made (no second reading of the runs) and adds
sections to the report; the ID-OOD frontier figure is :func:`fdalign.experiments.plots.frontier_plot`.
"""

from __future__ import annotations

import csv
import statistics
from pathlib import Path
from typing import Any

from fdalign.experiments.rows import ZERO_SHOT, Table, fmt_pm, stats, wiseft_row

# methods of the comparison besides FD-Align and fine-tuning: a report holding any of them gets its sections
COMPARED = ("logit-kd", "feature-kd", "l2-sp", "flyp", "clip-lora")


def is_comparison(runs, meta: dict) -> bool:
    """Whether the runs hold the comparison: a val_choice row, a method of :data:`COMPARED`, an ablation of the
    spurious prototypes or a LoRA run."""
    if meta.get("val_choice"):
        return True
    return any(
        r.config.get("method") in COMPARED
        or r.config.get("spurious", "real") != "real"
        or r.config.get("trainable", "full") != "full"
        for r in runs
    )


def headline_rows(g, meta: dict) -> list[str]:
    """The rows the comparison shows: zero-shot, each method that is not only a candidate of a val_choice row
    (the reference always), and the val_choice rows; in the report's order."""
    candidates = {m for ms in (meta.get("val_choice") or {}).values() for m in ms} - {meta.get("reference")}
    return [r for r in g.points if not r.startswith("wise-ft of ") and r not in candidates and g.points[r]]


def _mean(pts: dict, key: str) -> float | None:
    vals = [p[key] for p in pts.values() if p.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def frontier(g, rows: list[str]) -> list[tuple[str, float, float]]:
    """``[(row, ID, OOD mean)]`` of the rows (and their WiSE-FT rows) that no other point beats on both ID and
    OOD mean (means over seeds), best (ID + OOD mean) first."""
    pts = []
    for row in rows + [wiseft_row(r) for r in rows]:
        p = g.points.get(row)
        if p and _mean(p, "ood_mean") is not None:
            pts.append((row, _mean(p, "id"), _mean(p, "ood_mean")))
    front = [a for a in pts if not any(b[1] >= a[1] and b[2] >= a[2] and (b[1], b[2]) != (a[1], a[2]) for b in pts)]
    return sorted(front, key=lambda t: -(t[1] + t[2]))


def frontier_line(g, rows: list[str]) -> str | None:
    """One sentence: the best point on the ID-OOD frontier among the trained methods (zero-shot left out)."""
    trained = [r for r in rows if r != ZERO_SHOT]
    front = frontier(g, trained)
    if len(trained) < 2 or not front:
        return None
    best, id_, ood = front[0]
    others = ", ".join(r for r, *_ in front[1:])
    return (
        f"Best on the ID–OOD frontier among the methods run ({g.title}): **{best}** (ID {id_:.1f}, OOD mean "
        f"{ood:.1f}: of the points not beaten on both ID and OOD mean, the highest sum)"
        + (f"; also on the frontier: {others}." if others else ".")
    )


def _novel_points(g, groups: list) -> dict[str, dict[int, tuple[float, float]]]:
    """Base / novel top-1 per row and seed from a base-to-novel group of the same data set, if the report has one."""
    from fdalign.experiments.protocols import NOVEL_SET, base_novel_points

    for other in groups:
        if other is not g and other.dataset == g.dataset and any(NOVEL_SET in r.metrics for r in other.runs):
            return base_novel_points(other)
    return {}


def comparison_table(g, rows: list[str], groups: list) -> Table:
    """ID / OOD mean (and novel / HM when a base-to-novel group of the data set is in the report) per row and
    its WiSE-FT row (alpha chosen on val), mean ± std over seeds."""
    from fdalign.experiments.protocols import harmonic_mean

    novel = _novel_points(g, groups)
    header = ["method", "seeds", "ID", "OOD mean"] + (["novel", "HM"] if novel else [])
    header += ["WiSE-FT ID", "WiSE-FT OOD mean"]
    out = []
    for row in rows:
        pts = g.points[row]
        cells = [row, str(len(pts)), fmt_pm(stats([p["id"] for p in pts.values()]))]
        ood = [p["ood_mean"] for p in pts.values() if p["ood_mean"] is not None]
        cells.append(fmt_pm(stats(ood)) if ood else "–")
        if novel:
            bn = novel.get(row, {})
            if bn:
                b, n = stats([v[0] for v in bn.values()]), stats([v[1] for v in bn.values()])
                cells += [fmt_pm(n), f"{harmonic_mean(b['mean'], n['mean']):.1f}"]
            else:
                cells += ["–", "–"]
        w = g.points.get(wiseft_row(row))
        if w:
            wo = [p["ood_mean"] for p in w.values() if p["ood_mean"] is not None]
            cells += [fmt_pm(stats([p["id"] for p in w.values()])), fmt_pm(stats(wo)) if wo else "–"]
        else:
            cells += ["–", "–"]
        out.append(cells)
    return Table(header, out)


def paired_against(g, rows: list[str], reference: str) -> Table | None:
    """Per seed, ``row − reference`` (and WiSE-FT row − the reference's WiSE-FT row): mean ± std of the
    differences and in how many seeds the row was higher, for ID and OOD mean."""
    pairs = [(r, reference) for r in rows if r not in (reference, ZERO_SHOT)]
    pairs += [(wiseft_row(r), wiseft_row(reference)) for r in rows if r not in (reference, ZERO_SHOT)]
    out = []
    for row, ref in pairs:
        a, b = g.points.get(row) or {}, g.points.get(ref) or {}
        seeds = [s for s in a if s in b]
        if not seeds:
            continue
        cells = [f"{row} − {ref}", str(len(seeds))]
        for key in ("id", "ood_mean"):
            if any(a[s][key] is None or b[s][key] is None for s in seeds):
                cells += ["–", "–"]
                continue
            d = [a[s][key] - b[s][key] for s in seeds]
            cells += [fmt_pm(stats(d), signed=True), f"{sum(float(f'{x:.1f}') > 0 for x in d)} of {len(seeds)}"]
        out.append(cells)
    if not out:
        return None
    return Table(["difference", "seeds", "ID Δ", "ID higher in", "OOD mean Δ", "OOD higher in"], out)


def chosen_table(g) -> Table | None:
    """Which method each val_choice row took in each seed."""
    if not g.chosen:
        return None
    seeds = sorted({s for per in g.chosen.values() for s in per})
    return Table(
        ["row (chosen on val)"] + [f"seed {s}" for s in seeds],
        [[row] + [per.get(s, "–") for s in seeds] for row, per in g.chosen.items()],
    )


def step_seconds(log: Path | None, batch_size: int) -> float | None:
    """Median seconds per optimiser step of one run, from its log.csv (``batch / images_per_s``)."""
    if log is None or not Path(log).is_file():
        return None
    with open(log, newline="") as f:
        ips = [float(r["images_per_s"]) for r in csv.DictReader(f) if float(r.get("images_per_s") or 0) > 0]
    return statistics.median(batch_size / v for v in ips) if ips else None


def cost_table(g, rows: list[str], baseline: str = "fine-tune") -> Table | None:
    """Median step time per method (mean over its runs) and its ratio to ``baseline``'s, from the runs' logs.
    Runs on a shared machine are noisy; the ratio is what to read."""
    per: dict[str, list[float]] = {}
    for r in g.runs:
        t = step_seconds(r.log, int(r.config.get("batch_size") or 1))
        if t is not None:
            per.setdefault(r.method, []).append(t)
    for row, by_seed in g.chosen.items():  # a val_choice row costs what its chosen runs cost
        ts = [t for m in set(by_seed.values()) for t in per.get(m, [])]
        if ts:
            per[row] = ts
    if baseline not in per:
        return None
    base = sum(per[baseline]) / len(per[baseline])
    out = []
    for row in rows:
        if row in per:
            mean = sum(per[row]) / len(per[row])
            out.append([row, str(len(per[row])), f"{mean:.3f}", f"{mean / base:.2f}×", f"{mean - base:+.3f}"])
    return Table(["method", "runs", "s / step (median)", f"vs {baseline}", "extra s / step"], out)


def comparison_sections(groups: list, runs, meta: dict, out: Path, plots: bool = True) -> list[tuple[str, list[Any]]]:
    """The report's comparison sections (empty when the runs hold no comparison)."""
    if not is_comparison(runs, meta):
        return []
    ref = meta.get("reference") or "fd-align"
    items: list[Any] = [
        f"Every method through the same loop, data, val-only selection and WiSE-FT (alpha chosen on val). "
        f"Rows `X beta:val` take, per seed, the grid point of X whose selected model scored best on the few-shot "
        f"val split. Paired differences are against **{ref}**, seed by seed (same K-shot images and test sets)."
    ]
    cost: list[Any] = []
    for g in groups:
        if not g.ood_sets or g.dataset.startswith("mean of"):
            continue
        rows = headline_rows(g, meta)
        items += [f"**{g.title}**", comparison_table(g, rows, groups)]
        line = frontier_line(g, rows)
        if line:
            items.append(line)
        if ref in g.points:
            t = paired_against(g, rows, ref)
            if t:
                items += [f"Paired differences against {ref} ({g.title}):", t]
        t = chosen_table(g)
        if t:
            items += ["Chosen on val:", t]
        if plots:
            from fdalign.experiments import plots as P

            p = P.frontier_plot(g, rows, out)
            if p:
                items.append(("image", p.name, f"ID–OOD frontier with each method's WiSE-FT curve, {g.title}"))
        t = cost_table(g, rows)
        if t:
            cost += [f"**{g.title}**", t]
    sections = [("Robust fine-tuning comparison", items)]
    if cost:
        sections.append(
            (
                "Cost per step against fine-tuning",
                [
                    "Median seconds per optimiser step of each run (its log.csv), mean over runs; on a shared "
                    "machine the absolute times are noisy, the ratio is what to read."
                ]
                + cost,
            )
        )
    return sections


__all__ = [
    "COMPARED",
    "comparison_sections",
    "comparison_table",
    "cost_table",
    "frontier",
    "frontier_line",
    "headline_rows",
    "is_comparison",
    "paired_against",
    "step_seconds",
]
