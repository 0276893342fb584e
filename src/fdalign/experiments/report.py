"""One report across many runs: ``fdalign report DIR... [--format md,csv,html]``.

The input is any number of sweep folders (``fdalign sweep``) or single run folders (``fdalign
train``); which folders are runs, and what is done with duplicates, runs with other settings and
failed cells, is :mod:`fdalign.experiments.runs`: the report lists all of it. Each run gives rows:

* its method: the run's selected model (``fine-tuned`` in ``metrics.json``);
* ``zero-shot``: CLIP with the prompt prototypes, which every run evaluates (taken from the
  reference method's run of the same data set, shots and seed, else the first method's);
* ``wise-ft of <method>``: the run's WiSE-FT interpolation at the mixing weight chosen on val
  (``selection.json``); the other weights give the WiSE-FT curve in the ID-OOD plot.

Per data set and shot count, the table shows mean +- sample std over seeds of the ID top-1 (the
``test`` set), the unweighted OOD mean and each OOD set; the paired differences against the
reference method (full fine-tuning) are taken seed by seed (same K-shot images, same test sets).
Where the paper published a number for the same data set, shots, method and model
(``published.yaml``), a column shows ours minus theirs.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdalign.errors import FDAlignError
from fdalign.experiments.compare import comparison_sections, frontier_line
from fdalign.experiments.rows import COOP11, ZERO_SHOT, Table, fmt_pm, stats, summarise_group, wiseft_row
from fdalign.experiments.runs import EpisodeRecord, RunRecord, find_runs
from fdalign.io import atomic_write_json, atomic_write_text

PUBLISHED_FILE = Path(__file__).with_name("published.yaml")
FORMATS = ("md", "csv", "html")


def dataset_key(name: str) -> str:
    """The normaliser the released LR table uses: ``Oxford_Pets`` -> ``oxfordpets``."""
    from fdalign.workflows.parts import dataset_key as _dataset_key

    return _dataset_key(name)


def alpha_model(alpha: float) -> str:
    from fdalign.workflows.parts import alpha_name

    return ZERO_SHOT if alpha == 0 else "fine-tuned" if alpha == 1 else alpha_name(alpha)


# ----------------------------------------------------------------------------------------------
# the numbers


@dataclass
class Group:
    """One data set at one shot count: ``points[row][seed]`` and the WiSE-FT ``curves[method][alpha][seed]``."""

    dataset: str
    shots: int
    dataset_key: str
    id_set: str
    ood_sets: list[str]
    points: dict[str, dict[int, dict]]
    curves: dict[str, dict[float, dict[int, dict]]]
    runs: list[RunRecord]
    model_keys: set[str]
    chosen: dict[str, dict[int, str]] = dataclasses.field(default_factory=dict)  # val_choice row -> seed -> method

    @property
    def title(self) -> str:
        return f"{self.dataset}, {self.shots}-shot"


def build_groups(runs: list[RunRecord], meta: dict) -> list[Group]:
    """Rows per (data set, shots), in the order: zero-shot, methods, WiSE-FT rows."""
    keyed: dict[tuple[str, int], list[RunRecord]] = {}
    for r in runs:
        keyed.setdefault((r.dataset, r.shots), []).append(r)
    groups = []
    order = meta["methods"]
    for (ds, k), rs in sorted(keyed.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        rs.sort(key=lambda r: (r.seed, order.index(r.method) if r.method in order else len(order)))
        # runs made apart may hold other OOD sets: the table and the OOD mean use the ones all runs have
        ood = [s for s in rs[0].ood_sets if all(s in r.ood_sets for r in rs)]
        points: dict[str, dict[int, dict]] = {ZERO_SHOT: {}}
        curves: dict[str, dict[float, dict[int, dict]]] = {}
        for m in order:
            for r in (r for r in rs if r.method == m):
                points.setdefault(m, {})[r.seed] = r.point("fine-tuned", ood)
                if r.seed not in points[ZERO_SHOT] or m == meta.get("reference"):
                    points[ZERO_SHOT][r.seed] = r.point(ZERO_SHOT, ood)
                if m in meta["wiseft"] and r.chosen_alpha is not None:
                    p = r.point(alpha_model(r.chosen_alpha), ood)
                    if p is not None:
                        p["alpha"] = r.chosen_alpha  # the mixing weight chosen on val, shown beside its numbers
                    points.setdefault(wiseft_row(m), {})[r.seed] = p
                    for a in r.alphas():
                        curves.setdefault(m, {}).setdefault(a, {})[r.seed] = r.point(alpha_model(a), ood)
        chosen = val_choice_rows(rs, meta.get("val_choice") or {}, points, curves)
        head_rows = _head_rows(rs, order, meta.get("reference"), points, ood)
        points = {row: {s: p for s, p in sorted(v.items()) if p is not None} for row, v in points.items()}
        points = {row: v for row, v in points.items() if v}  # a row no run evaluated is no row of "0 | –"
        wise = list(meta["wiseft"]) + [r for r in chosen if r not in meta["wiseft"]]
        rows = (
            [ZERO_SHOT]
            + [m for m in order if m in points]
            + [r for r in chosen if r in points]
            + [wiseft_row(m) for m in wise if wiseft_row(m) in points]
            + head_rows
        )
        rows = [row for row in rows if row in points]
        groups.append(
            Group(
                ds,
                k,
                dataset_key(ds),
                rs[0].id_set,
                ood,
                {row: points[row] for row in rows},
                curves,
                rs,
                {r.model_key for r in rs},
                chosen,
            )
        )
    return groups


def val_choice_rows(runs: list[RunRecord], val_choice: dict, points: dict, curves: dict) -> dict[str, dict[int, str]]:
    """Rows chosen on val (a sweep's ``val_choice``: ``{row: [methods]}``, e.g. a method's beta grid): per seed,
    the listed method whose selected model scored best on the few-shot val split (its ``val_top1``; ties go to
    the first listed) gives the row, its WiSE-FT row and its WiSE-FT curve. The choice goes through
    :func:`fdalign.selection.select` on the val scores the runs recorded; no test or OOD number is read.
    Adds to ``points`` / ``curves``; returns ``{row: {seed: chosen method}}``."""
    from fdalign.selection import EvalSplit, select

    recorded = EvalSplit([], "val", "the few-shot val split: each run's recorded val top-1 of its selected model")
    out: dict[str, dict[int, str]] = {}
    for row, methods in val_choice.items():
        for seed in sorted({r.seed for r in runs}):
            scores = {
                m: r.val_top1
                for m in methods
                for r in runs
                if r.method == m and r.seed == seed and r.val_top1 is not None and seed in points.get(m, {})
            }
            if not scores:
                continue
            m = select(row, scores, recorded)
            out.setdefault(row, {})[seed] = m
            points.setdefault(row, {})[seed] = points[m][seed]
            if seed in points.get(wiseft_row(m), {}):
                points.setdefault(wiseft_row(row), {})[seed] = points[wiseft_row(m)][seed]
            for a, per_seed in curves.get(m, {}).items():
                if seed in per_seed:
                    curves.setdefault(row, {}).setdefault(a, {})[seed] = per_seed[seed]
    return out


def _head_rows(
    runs: list[RunRecord], order: list[str], reference: str | None, points: dict, ood: list[str]
) -> list[str]:
    """Cache-head rows, as in the paper's table: "Tip" (zero-shot CLIP's encoder, the same in every run,
    taken like the zero-shot row) and "Tip + <method>" (the run's fine-tuned encoder). Adds them to
    ``points``; returns their names in order."""
    rows: list[str] = []
    for m in order:
        for r in (r for r in runs if r.method == m):
            for model in next(iter(r.metrics.values())):
                if not model.startswith("head:"):
                    continue
                head, _, encoder = model[len("head:") :].partition(" + ")
                row = f"{head} + {m}" if encoder else head
                if encoder or r.seed not in points.get(row, {}) or m == reference:
                    points.setdefault(row, {})[r.seed] = r.point(model, ood)
                if row not in rows:
                    rows.append(row)
    return sorted(rows, key=lambda x: (x.split(" + ")[0], " + " in x))


def mean_group(groups: list[Group]) -> list[Group]:
    """The mean over data sets per shot count (seed by seed), when a shot count has 2+ data sets.

    A row and seed count only when every data set has them, so the mean is over the same data sets."""
    out = []
    for k in sorted({g.shots for g in groups}):
        gs = [g for g in groups if g.shots == k]
        if len(gs) < 2:
            continue
        points: dict[str, dict[int, dict]] = {}
        for row in gs[0].points:
            seeds = set.intersection(*(set(g.points.get(row, {})) for g in gs))
            for s in sorted(seeds):
                ids = [g.points[row][s]["id"] for g in gs]
                oods = [g.points[row][s]["ood_mean"] for g in gs]
                points.setdefault(row, {})[s] = {
                    "id": sum(ids) / len(ids),
                    "sets": {},
                    "ood_mean": sum(oods) / len(oods) if None not in oods else None,
                }
        keys = {g.dataset_key for g in gs}
        name = f"mean of {len(gs)} data sets"
        out.append(
            Group(
                name,
                k,
                "coop11-mean" if keys == COOP11 else name,
                "mean",
                [],
                points,
                {},
                [r for g in gs for r in g.runs],
                set.union(*(g.model_keys for g in gs)),
            )
        )
    return out


def paired_differences(g: Group, reference: str) -> dict[str, dict]:
    """``{row: {"n", "seeds", "id", "ood_mean": {"mean", "std", "values"}, "ood_wins"}}``: per seed
    ``row - reference`` on the seeds both have; the reference row itself is left out."""
    ref = g.points.get(reference)
    if not ref:
        return {}
    out = {}
    for row, per_seed in g.points.items():
        if row == reference:
            continue
        seeds = [s for s in per_seed if s in ref]
        if not seeds:
            continue
        d = {"n": len(seeds), "seeds": seeds, "id": stats([per_seed[s]["id"] - ref[s]["id"] for s in seeds])}
        if all(per_seed[s]["ood_mean"] is not None and ref[s]["ood_mean"] is not None for s in seeds):
            diffs = [per_seed[s]["ood_mean"] - ref[s]["ood_mean"] for s in seeds]
            d["ood_mean"] = stats(diffs)
            d["ood_wins"] = sum(float(f"{x:.1f}") > 0 for x in diffs)  # as printed: float noise is no win
        out[row] = d
    return out


def load_published(path: str | os.PathLike = PUBLISHED_FILE) -> dict:
    from fdalign.options import read_yaml

    return read_yaml(path, "published numbers file")


def published_value(pub: dict, g: Group, row: str) -> tuple[float, str] | None:
    """The paper's ID top-1 for this data set, shots, method and model, with its table; None if none."""
    if g.model_keys != {pub["model"]}:
        return None  # another model (or a mix): a difference would mean nothing
    for e in pub["entries"]:
        if dataset_key(e["dataset"]) != dataset_key(g.dataset_key) or row not in e["methods"]:
            continue
        shots = e["shots"] if isinstance(e["shots"], list) else [e["shots"]]
        if g.shots in shots:
            v = e["top1"][shots.index(g.shots)] if isinstance(e["top1"], list) else e["top1"]
            return float(v), e.get("table", "")
    return None


# ----------------------------------------------------------------------------------------------
# the document: sections of text, tables and images, rendered as markdown or HTML


def _pm(d: dict | None) -> str:
    if d is None or d["mean"] is None or (isinstance(d["mean"], float) and math.isnan(d["mean"])):
        return "–"
    return fmt_pm(d)


def alphas_cell(alphas: list[float]) -> str:
    """The WiSE-FT mixing weights chosen on val, one per seed in seed order (once when all agree)."""
    text = [f"{a:g}" for a in alphas]
    return text[0] if len(set(text)) == 1 else " / ".join(text)


def results_table(g: Group, summary: dict, pub: dict | None) -> Table:
    has_ood = "ood_mean" in next(iter(summary.values()), {})
    header = ["method", "seeds", f"ID ({g.id_set})"] + (["OOD mean"] + g.ood_sets if has_ood else [])
    has_alpha = any("alpha" in d for d in summary.values())
    if has_alpha:
        header += ["WiSE-FT α (val)"]
    with_pub = pub is not None and any(published_value(pub, g, row) for row in summary)
    if with_pub:
        header += ["published ID", "ours − published"]
    rows = []
    for row, d in summary.items():
        cells = [row, str(d["n"]), _pm(d["id"])]
        if has_ood:
            cells += [_pm(d.get("ood_mean"))] + [_pm(d.get(s)) for s in g.ood_sets]
        if has_alpha:
            cells += [alphas_cell(d["alpha"]) if "alpha" in d else ""]
        if with_pub:
            p = published_value(pub, g, row)
            cells += [f"{p[0]:.2f}", f"{d['id']['mean'] - p[0]:+.1f}"] if p else ["", ""]
        rows.append(cells)
    return Table(header, rows)


def paired_table(diffs: dict, reference: str) -> Table:
    has_ood = any("ood_mean" in d for d in diffs.values())
    header = [f"method − {reference}", "seeds", "ID Δ"] + (["OOD mean Δ", "OOD higher in"] if has_ood else [])
    rows = []
    for row, d in diffs.items():
        cells = [row, str(d["n"]), fmt_pm(d["id"], signed=True)]
        if has_ood and "ood_mean" in d:
            cells += [fmt_pm(d["ood_mean"], signed=True), f"{d['ood_wins']} of {d['n']}"]
        elif has_ood:  # a row evaluated without the OOD sets (a cache head)
            cells += ["–", "–"]
        rows.append(cells)
    return Table(header, rows)


def environment_lines(runs: list[RunRecord]) -> list[str]:
    envs = [r.environment for r in runs if r.environment]
    lines = []
    keys = ["fdalign", "torch", "open_clip", "transformers", "python", "platform", "gpu", "cpu_count", "torch_threads"]
    for k in keys:
        vals = sorted({str(e[k]) for e in envs if k in e})
        if vals:
            lines.append(f"- {k}: {', '.join(vals)}")
    devices = sorted({str(r.config.get("device")) for r in runs})
    gpus = sorted({e.get("gpu", "cpu") for e in envs})
    lines.append(f"- device setting: {', '.join(devices)}; ran on: {', '.join(gpus) if envs else 'not recorded'}")
    lines.append(f"- models: {', '.join(sorted({r.model_key for r in runs}))}")
    if not envs:
        lines.append("- (runs made outside `fdalign sweep` carry no environment record)")
    return lines


def _sweep_costs(paths) -> list[tuple[Path, dict]]:
    out = []
    for p in paths:
        f = Path(p) / "sweep.json"
        if f.is_file():
            try:
                cost = json.loads(f.read_text(encoding="utf-8")).get("cost")
            except (OSError, ValueError):
                continue
            if isinstance(cost, dict):
                out.append((Path(p), cost))
    return out


def _pixel_cost(pixels) -> str:
    """The pixel cache's part of a sweep's cost line ("" for a sweep without one)."""
    if not pixels:
        return ""
    return (
        f" Pixel cache {pixels.get('hits', 0)} hits, {pixels.get('misses', 0)} misses, "
        f"{pixels.get('corrupt', 0)} damaged entries recomputed, {pixels.get('bytes_read', 0) / 1e6:.0f} MB read, "
        f"{pixels.get('bytes_written', 0) / 1e6:.0f} MB written, {pixels.get('evicted', 0)} evicted, "
        f"{pixels.get('seconds_saved', 0):.0f} s of decoding saved."
    )


def cost_section(paths) -> list[Any]:
    """What each sweep cost (its sweep.json): wall time over its invocations, busy time per worker, and
    the feature cache's hits and the encoder time they saved."""
    items: list[Any] = []
    for p, c in _sweep_costs(paths):
        cache = c.get("cache") or {}
        busy = c.get("busy_seconds") or {}
        items.append(
            f"**{p}**: {c.get('wall_seconds', 0):.0f} s wall over {len(c.get('invocations') or [])} "
            f"invocation(s); {sum(busy.values()):.0f} s busy on {len(busy)} worker(s); feature cache "
            f"{cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses, {cache.get('corrupt', 0)} corrupt "
            f"entries recomputed, {cache.get('seconds_saved', 0):.0f} s of encoder time saved."
            + _pixel_cost(c.get("pixel_cache"))
        )
        if busy:
            items.append(Table(["worker (host:pid)", "busy s"], [[w, f"{b:.0f}"] for w, b in busy.items()]))
    return items


def _short(h: str) -> str:
    """``content:9f3a...`` -> ``content:9f3a12cd4e5f`` (enough to tell splits apart)."""
    kind, _, digest = h.rpartition(":")
    return f"{kind}:{digest[:12]}" if kind else digest[:12]


def hash_table(runs: list[RunRecord]) -> Table:
    """Split hashes: one row per data set, shots and seed (train / val), test and OOD sets once per data set."""
    rows, seen = [], set()
    for r in sorted(runs, key=lambda r: (r.dataset, r.shots, r.seed, r.method)):
        key = (r.dataset, r.shots, r.seed)
        if key in seen:
            continue
        seen.add(key)
        fixed = "; ".join(f"{k} {_short(v)}" for k, v in r.hashes.items() if k not in ("train", "val"))
        rows.append(
            [
                r.dataset,
                str(r.shots),
                str(r.seed),
                _short(r.hashes.get("train", "")),
                _short(r.hashes.get("val", "")),
                fixed,
            ]
        )
    return Table(["data set", "shots", "seed", "train", "val", "test / OOD"], rows)


@dataclass
class Report:
    """Everything the report says, before it is rendered."""

    title: str
    intro: list[str]
    sections: list[tuple[str, list[Any]]]  # (heading, [str | Table | ("image", path, alt)])
    summary: dict  # machine-readable numbers (summary.json)
    csv_rows: list[list[Any]]


def feature_figures(groups: list[Group], meta: dict, out: Path) -> list[Any]:
    """t-SNE and spurious-distribution figures of zero-shot, the reference method and the first other
    WiSE-FT method (FD-Align), for every group whose runs and data can be loaded here."""
    from fdalign.experiments import plots as P

    ref = meta["reference"]
    others = [m for m in meta["wiseft"] if m != ref][:1]
    methods = ([ref] if ref else []) + others
    images: list[Any] = []
    for g in groups:
        data = P.model_features(g, methods) if methods else None
        if data is None:
            continue
        images.append(("image", P.tsne_plot(g, data, out).name, f"t-SNE of image features, {g.title}"))
        images.append(("image", P.spurious_plot(g, data, out).name, f"spurious distributions, {g.title}"))
    return images


def build_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    plots: bool = True,
    extra: list[tuple[str, list[Any]]] | None = None,
    title: str | None = None,
    features: bool = True,
) -> Report:
    """Read the runs under ``paths`` and compose the report; plots are written to ``out``. With
    ``features``, the t-SNE and spurious-distribution figures load the first seed's models and a few
    images of each set (skipped when the data are not on this machine)."""
    runs, meta = find_runs(paths)
    if not runs:
        return build_episode_report(meta["episodes"], meta, paths, title)
    if meta.get("episodes"):
        extra = list(extra or []) + [("N-way K-shot episodes", episode_tables(meta["episodes"], meta["methods"]))]
    groups = build_groups(runs, meta)
    all_groups = groups + mean_group(groups)
    pub = load_published()
    ref = meta["reference"]
    out = Path(out)
    sections: list[tuple[str, list[Any]]] = []
    summary: dict[str, Any] = {"reference": ref, "groups": []}
    csv_rows: list[list[Any]] = [
        ["data set", "shots", "method", "metric", "seeds", "mean", "std", "published", "ours_minus_published"]
    ]
    results: list[Any] = []
    paired: list[Any] = []
    for g in all_groups:
        s = summarise_group(g)
        diffs = paired_differences(g, ref) if ref else {}
        results += [f"**{g.title}**", results_table(g, s, pub)]
        line = frontier_line(g, [r for r in g.points if not r.startswith("wise-ft of ")]) if g.ood_sets else None
        if line:
            results.append(line)
        if diffs:
            paired += [f"**{g.title}**", paired_table(diffs, ref)]
        summary["groups"].append(
            {
                "dataset": g.dataset,
                "shots": g.shots,
                "id_set": g.id_set,
                "ood_sets": g.ood_sets,
                "rows": s,
                "paired": diffs,
                "per_seed": {row: {str(k): v for k, v in pts.items()} for row, pts in g.points.items()},
            }
        )
        for row, d in s.items():
            p = published_value(pub, g, row)
            for metric in ["id", "ood_mean"] + g.ood_sets:
                if metric in d:
                    pv = p[0] if (p and metric == "id") else None
                    csv_rows.append(
                        [
                            g.dataset,
                            g.shots,
                            row,
                            g.id_set if metric == "id" else metric,
                            d["n"],
                            round(d[metric]["mean"], 4),
                            round(d[metric]["std"], 4),
                            "" if pv is None else pv,
                            "" if pv is None else round(d[metric]["mean"] - pv, 4),
                        ]
                    )
            if "alpha" in d:
                a = stats(d["alpha"])
                csv_rows.append(
                    [g.dataset, g.shots, row, "wiseft_alpha", d["n"], round(a["mean"], 4), round(a["std"], 4), "", ""]
                )
    sections.append(("Results", results))
    sections += comparison_sections(groups, runs, meta, out, plots)
    from fdalign.experiments.protocols import protocol_csv_rows, protocol_sections

    protocol, summary["protocols"] = protocol_sections(groups, meta, pub)
    sections += protocol
    csv_rows += protocol_csv_rows(summary["protocols"])
    for name, items in extra or []:
        sections.append((name, items))
    if paired:
        with_ood = any(isinstance(t, Table) and "OOD mean Δ" in t.header for t in paired)
        sections.append(
            (
                f"Paired differences against {ref}",
                [
                    f"Per seed, each method minus {ref} on the same K-shot images and test sets; mean ± sample std of "
                    "those differences" + (", and in how many seeds the OOD mean was higher." if with_ood else ".")
                ]
                + paired,
            )
        )
    if plots:
        from fdalign.experiments import plots as P

        images: list[Any] = []
        if len({g.shots for g in groups}) > 1:
            for path in P.accuracy_vs_shots(groups, out):
                images.append(("image", path.name, "accuracy vs shots"))
        for g in groups:
            for p, what in ((P.accuracy_by_set(g, out), "accuracy by set"), (P.id_ood_plane(g, out), "ID vs OOD")):
                if p:
                    images.append(("image", p.name, f"{what}, {g.title}"))
        for g in groups:
            p = P.training_curves(g, out)
            if p:
                images.append(("image", p.name, f"training curves, {g.title}"))
        if features:
            images += feature_figures(groups, meta, out)
        sections.append(
            (
                "Plots",
                [
                    "Accuracy vs shots per method (with 2+ shot counts); accuracy on each set; the ID–OOD plane with the WiSE-FT curves (alpha from 0 = zero-shot to "
                    "1 = fine-tuned, mean over seeds; a star marks the alpha chosen on val); training curves (CE, KL, LR "
                    "per step) of every run; for the first seed, t-SNE of the image features of zero-shot CLIP and the "
                    "fine-tuned encoders (2 images per class of every set; colour = class, marker = set) and the "
                    "spurious distribution P_spur of a few ID images before and after fine-tuning."
                ]
                + images,
            )
        )
    sources = [
        f"Published numbers: {pub['source'].strip()} Shown only where data set, shots, method and model "
        f"(`{pub['model']}`) match."
    ]
    sections.append(
        (
            "Where the numbers come from",
            sources
            + [
                f"{len(runs)} runs from {', '.join(map(str, paths))}. ID = the `{groups[0].id_set}` set"
                + ("; OOD mean = unweighted mean of the OOD sets. " if any(g.ood_sets for g in groups) else ". ")
                + "zero-shot = CLIP with the prompt prototypes (evaluated by every run); "
                "wise-ft of X = X's WiSE-FT interpolation with the mixing weight chosen on the few-shot val split. "
                "Nothing was selected on a test or OOD set."
            ],
        )
    )
    sections.append(("Runs read", runs_read(runs, meta)))
    shared = shared_section(runs)
    if shared:
        sections.append(("Settings all runs share", shared))
    sections.append(("Environment", ["\n".join(environment_lines(runs))]))
    cost = cost_section(paths)
    if cost:
        sections.append(("Cost", cost))
        summary["cost"] = {str(p): c for p, c in _sweep_costs(paths)}
    sections.append(("Split hashes", [hash_table(runs)]))
    names = ", ".join(n for n in meta["names"] if n) or "runs"
    intro = (
        [
            f"Top-1 accuracy in percent, mean ± sample std over seeds (a single seed: its value alone); "
            f"{len({r.seed for r in runs})} seed(s), {len(groups)} data set/shot setting(s), {len(runs)} runs "
            "(listed under Runs read)."
        ]
        + not_used_intro(meta)
        + settings_intro(runs, meta)
    )
    if meta["skipped"]:
        sections.insert(1, ("Failed, missing and unused runs", not_used(meta)))
    summary["environment"] = environment_lines(runs)
    summary["runs"] = [{"dir": str(r.dir), "key": r.key, "row": r.method} for r in runs]
    summary["not_used"] = [{"dir": str(x.dir), "key": x.key, "state": x.state, "why": x.why} for x in meta["skipped"]]
    return Report(title or f"fdalign report: {names}", intro, sections, summary, csv_rows)


def runs_read(runs: list[RunRecord], meta: dict) -> list[Any]:
    """Every run used: its folder, its key, the row it gives and the settings in which the runs differ."""
    import json

    from fdalign.experiments.runs import _fmt, settings

    per_run = [settings(r) for r in runs]
    fields = sorted(
        k
        for k in set().union(*per_run)
        if len({json.dumps(s.get(k), sort_keys=True, default=str) for s in per_run}) > 1
    )
    rows = [
        [str(r.dir), r.key, r.method, ", ".join(f"{k}={_fmt(s.get(k))}" for k in fields) or "–"]
        for r, s in sorted(zip(runs, per_run), key=lambda rs: (rs[0].dataset, rs[0].shots, rs[0].seed, rs[0].method))
    ]
    notes = [f"- {n}" for n in meta["notes"]]
    return (
        [
            "Runs with the same data set, shots, seed and method are never merged: with other settings they "
            "are kept apart as rows of their own (named after the settings that differ), with the same "
            "settings the first one read is used and the other is listed as a duplicate."
        ]
        + (["\n".join(notes)] if notes else [])
        + [Table(["run folder", "key", "row", "settings that differ"], rows)]
    )


def shared_section(runs: list[RunRecord]) -> list[Any]:
    """The settings every run has with one value (a sweep's ``--set epochs=1`` among them): no table
    column shows them, and they change every number."""
    from fdalign.experiments.runs import _fmt, shared_settings

    shared = shared_settings(runs)
    if not shared:
        return []
    return [
        f"The settings all {len(runs)} runs share (those that differ are under Runs read).",
        Table(["setting", "value"], [[k, _fmt(v)] for k, v in shared.items()]),
    ]


def settings_intro(runs: list[RunRecord], meta: dict) -> list[str]:
    """What changes every number and no table shows: a sweep's ``--set`` overrides, and a warm-up that
    lasted a whole run (the LR never decayed)."""
    from fdalign.workflows.parts import warmup_warning

    lines = [
        f"**Every run of {path} was made with `--set "
        + " --set ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items())
        + "`** (listed under Settings all runs share)."
        for path, sets in meta.get("overrides", {}).items()
    ]
    warm = {}
    for r in runs:
        c = r.config
        try:
            w = warmup_warning(
                c.get("mode", "fdalign"),
                int(c["epochs"]),
                int(c.get("lp_epochs", 0)),
                float(c["warmup_epochs"]),
                c.get("warmup_steps"),
            )
        except (KeyError, TypeError, ValueError):  # a run recorded without these settings: nothing to say
            continue
        if w:
            warm.setdefault(w, []).append(r)
    lines += [f"**Warning: in {len(rs)} of {len(runs)} runs {w}.**" for w, rs in warm.items()]
    return lines


def not_used_intro(meta: dict) -> list[str]:
    states: dict[str, int] = {}
    for x in meta["skipped"]:
        states[x.state] = states.get(x.state, 0) + 1
    if not states:
        return []
    return [
        f"**Not in the tables: {', '.join(f'{n} {s}' for s, n in states.items())}** (listed under Failed, "
        "missing and unused runs)."
    ]


def not_used(meta: dict) -> list[Any]:
    """Sweep cells that failed, were never run or are damaged, and duplicates: none is dropped silently."""
    rows = [[str(x.dir), x.key, x.state, x.why] for x in meta["skipped"]]
    return [
        "Folders the report found and did not use, and cells of the sweeps that have no finished run.",
        Table(["folder", "key", "state", "why"], rows),
    ]


def episode_tables(records: list[EpisodeRecord], methods: list[str]) -> list[Any]:
    """Per data set: a row per (method, head) and zero-shot CLIP, a column per (target, setting); cells
    are the mean ± sample std over seeds of each run's mean episode accuracy."""
    items: list[Any] = []
    for ds in sorted({r.dataset for r in records}):
        rs = sorted(
            (r for r in records if r.dataset == ds),
            key=lambda r: (methods.index(r.method) if r.method in methods else len(methods), r.seed),
        )
        cols = [(t, st) for t, per in rs[0].metrics.items() for st in per]
        heads = list(dict.fromkeys(h for t, st in cols for h in rs[0].metrics[t][st].get("fine-tuned", {})))
        first = rs[0].method  # zero-shot CLIP: the same in every run; read from the first method's runs
        sources = [("zero-shot", "zero-shot", [r for r in rs if r.method == first])]
        sources += [(m, "fine-tuned", [r for r in rs if r.method == m]) for m in dict.fromkeys(r.method for r in rs)]
        rows = []
        for label, model, group in sources:
            for h in heads:
                cells = []
                for t, st in cols:
                    vals = [
                        r.metrics[t][st][model][h]["mean"]
                        for r in group
                        if model in r.metrics.get(t, {}).get(st, {}) and h in r.metrics[t][st][model]
                    ]
                    cells.append("–" if not vals else _pm(stats(vals)) + f" ({len(vals)})")
                rows.append([label, h] + cells)
        items += [f"**{ds}**", Table(["method", "head"] + [f"{t} {st}" for t, st in cols], rows)]
    return items


def build_episode_report(records: list[EpisodeRecord], meta: dict, paths, title: str | None = None) -> Report:
    """The report of a sweep of meta-training runs (protocol: episodes)."""
    sections = [
        (
            "N-way K-shot episodes",
            [
                "Mean episode accuracy in percent, mean ± sample std over seeds (number of seeds in brackets); each "
                "run's own 95% interval over its episodes is in its report.md. zero-shot = CLIP before training; "
                "heads: proto (ProtoNet on the support images), text (the classes' prompt prototypes), combined."
            ]
            + episode_tables(records, meta["methods"]),
        )
    ]
    sections.append(
        (
            "Where the numbers come from",
            [
                f"{len(records)} meta-training runs from {', '.join(map(str, paths))}; the epoch of each was chosen on "
                "episodes of the val classes only."
            ]
            + [f"- {n}" for n in meta["notes"]]
            + [Table(["run folder", "key", "row"], [[str(r.dir), r.key, r.method] for r in records])],
        )
    )
    if meta["skipped"]:
        sections.insert(1, ("Failed, missing and unused runs", not_used(meta)))
    summary = {"episodes": {r.dir.name: r.metrics for r in records}}
    names = ", ".join(n for n in meta["names"] if n) or "runs"
    return Report(title or f"fdalign report: {names}", [], sections, summary, [["see report.md"]])


def _md_table(t: Table) -> list[str]:
    aligns = ["---"] + ["---:"] * (len(t.header) - 1)

    def cell(c: str) -> str:  # an error message or a path may hold a bar or a line break
        return " ".join(str(c).split()).replace("|", "\\|")

    return ["| " + " | ".join(t.header) + " |", "|" + "|".join(aligns) + "|"] + [
        "| " + " | ".join(cell(c) for c in r) + " |" for r in t.rows
    ]


def to_markdown(rep: Report) -> str:
    lines = [f"# {rep.title}", "", *rep.intro, ""]
    for heading, items in rep.sections:
        lines += [f"## {heading}", ""]
        for it in items:
            if isinstance(it, Table):
                lines += _md_table(it) + [""]
            elif isinstance(it, tuple) and it[0] == "image":
                lines += [f"![{it[2]}]({it[1]})", ""]
            else:
                lines += [str(it), ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def to_html(rep: Report) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(rep.title)}</title>",
        "<style>body{font-family:sans-serif;max-width:75em;margin:2em auto}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(rep.title)}</h1>",
    ] + [f"<p>{_inline(p)}</p>" for p in rep.intro]
    for heading, items in rep.sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for it in items:
            if isinstance(it, Table):
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in it.header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in it.rows]
                parts.append("</table>")
            elif isinstance(it, tuple) and it[0] == "image":
                parts.append(f"<p><img src='{html.escape(it[1])}' alt='{html.escape(it[2])}'></p>")
            elif str(it).startswith("- "):
                parts.append("<ul>" + "".join(f"<li>{_inline(x[2:])}</li>" for x in str(it).splitlines()) + "</ul>")
            else:
                parts.append(f"<p>{_inline(str(it))}</p>")
    return "\n".join(parts + ["</body></html>"]) + "\n"


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rep.csv_rows)
    return buf.getvalue()


def default_out(paths: Sequence[str | os.PathLike]) -> Path:
    """Where the report goes without ``--out``: a single sweep folder, whose report it is (its runs
    live in ``runs/``, and the sweep writes no report of its own). Anything else would write inside a
    folder the report reads (a run's own report.md), so ``--out`` must name the place."""
    if len(paths) == 1 and (Path(paths[0]) / "sweep.json").is_file():
        return Path(paths[0])
    find_runs(paths)  # a missing folder or no runs at all is the error to show first
    what = "a folder it reads" if len(paths) == 1 else "one of the folders it reads"
    raise FDAlignError(
        f"fdalign report {' '.join(map(str, paths))}: give --out DIR; without it the report would "
        f"write into {paths[0]}, {what} (its own report.md and files would be replaced)"
    )


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    formats: Sequence[str] = ("md",),
    plots: bool = True,
    extra: list[tuple[str, list[Any]]] | None = None,
    title: str | None = None,
    features: bool = True,
) -> list[Path]:
    """Write ``report.{md,csv,html}``, ``summary.json`` and the PNGs into ``out`` (default: see
    :func:`default_out`); returns the written report files."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise FDAlignError(f"--format {bad[0]!r} is not one of {', '.join(FORMATS)}")
    out = Path(out) if out is not None else default_out(paths)
    rep = build_report(paths, out, plots=plots, extra=extra, title=title, features=features)
    written = []
    render = {"md": to_markdown, "csv": to_csv, "html": to_html}
    for f in formats:
        written.append(atomic_write_text(out / f"report.{f}", render[f](rep)))
    atomic_write_json(out / "summary.json", json_safe(rep.summary))
    return written


def json_safe(doc: Any) -> Any:
    """``doc`` with every NaN or infinity as None: summary.json must be JSON other tools can read, and
    ``NaN`` is not JSON."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return None
    if isinstance(doc, dict):
        return {k: json_safe(v) for k, v in doc.items()}
    if isinstance(doc, (list, tuple)):
        return [json_safe(v) for v in doc]
    return doc


__all__ = [
    "find_runs",
    "build_groups",
    "mean_group",
    "summarise_group",
    "paired_differences",
    "published_value",
    "build_report",
    "write_report",
    "to_markdown",
    "to_html",
    "to_csv",
    "RunRecord",
    "Group",
    "wiseft_row",
]
