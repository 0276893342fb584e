"""The generalisation protocols of a sweep: base-to-novel and cross-data-set transfer.

Planning: ``protocol: base2novel`` gives every run ``base_classes`` (``first-half`` unless a train
block names a file): train and select on the first ``ceil(n/2)`` classes in label order (CoCoOp's
convention: label index, not class name), then score the base test images with the base classes'
prototypes and the novel test images with the novel classes' prototypes. ``protocol:
cross-dataset`` gives every run its data set's ``targets`` (``NAME=PATH``, or ``world``: every
style folder of a rendered world), each scored with its own class names and templates. Both are
ordinary ``fdalign train`` runs (``--base-classes``, ``--target``).

Reporting: the field's tables, read from the report's groups (``points[row][seed]["sets"]``): base /
novel / harmonic mean per data set and their average (the HM of the mean base and mean novel
accuracy, as CoCoOp reports it), ours minus published with the source, and the novel accuracy's
paired differences seed by seed; for cross-data-set, the source and every target.
"""

from __future__ import annotations

from typing import Any

from fdalign.errors import FDAlignError
from fdalign.experiments.rows import ZERO_SHOT, fmt_pm, stats, wiseft_row

BASE2NOVEL = "base2novel"
CROSS_DATASET = "cross-dataset"
PROTOCOLS = (BASE2NOVEL, CROSS_DATASET)
BASE_SET, NOVEL_SET = "test", "novel"  # the run's metrics.json set names


def harmonic_mean(base: float, novel: float) -> float:
    """``2 b n / (b + n)``; 0 when both are 0."""
    return 2 * base * novel / (base + novel) if base + novel > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# planning


def check_protocol(cfg) -> None:
    """What a protocol asks of a sweep config (``cfg``: a SweepConfig), as errors naming the key."""
    if cfg.protocol == BASE2NOVEL and cfg.heads:
        raise FDAlignError(
            f"{cfg.source}: heads are fitted and scored on a run's own classes, which protocol "
            "base2novel splits; drop heads (or run them with protocol kshot)"
        )
    if cfg.protocol == CROSS_DATASET:
        for d in cfg.datasets:
            if not d.targets:
                raise FDAlignError(
                    f"{cfg.source}: datasets.{d.name} has no targets; protocol cross-dataset "
                    "evaluates each source on its targets (a list of NAME=PATH, or 'world')"
                )
    elif any(d.targets for d in cfg.datasets):
        raise FDAlignError(
            f"{cfg.source}: targets are read by protocol cross-dataset only; set protocol: cross-dataset or drop them"
        )


def run_fields(cfg, ds, data: str, fill) -> dict[str, Any]:
    """The TrainConfig fields a protocol adds to one run of data set ``ds`` (``fill(path, what)`` resolves
    ``{data_root}``); ``{}`` for plain K-shot runs."""
    if cfg.protocol == BASE2NOVEL:
        return {"base_classes": _base_classes(cfg, ds, fill)}
    if cfg.protocol == CROSS_DATASET:
        return {"target": _targets(ds, data, fill, cfg.source)}
    return {}


def _base_classes(cfg, ds, fill) -> str:
    from fdalign.data.classsplit import FIRST_HALF

    for block in (ds.train, cfg.train):  # the data set's own file wins over the sweep-wide one
        value = block.get("base_classes", block.get("base-classes"))
        if value:
            return value if value == FIRST_HALF else fill(value, "base_classes")
    return FIRST_HALF


def _targets(ds, data: str, fill, source: str) -> list[str]:
    specs = ds.targets if isinstance(ds.targets, list) else [ds.targets]
    out = []
    for spec in specs:
        if spec == "world":
            from fdalign.world.render import ood_args

            out += ood_args(data)
            continue
        if "=" not in str(spec):
            raise FDAlignError(f"{source}: datasets.{ds.name}.targets has {spec!r}; write NAME=PATH or world")
        name, path = str(spec).split("=", 1)
        out.append(f"{name}={fill(path, f'datasets.{ds.name}.targets')}")
    return out


# ----------------------------------------------------------------------------------------------
# reporting


def protocol_sections(groups: list, meta: dict, pub: dict) -> tuple[list[tuple[str, list[Any]]], dict]:
    """``([(heading, items)], summary)`` for the report: the base-to-novel and cross-data-set tables of
    the groups whose runs hold those sets (none: nothing)."""
    sections, summary = [], {}
    b2n = [g for g in groups if _has_sets(g, (BASE_SET, NOVEL_SET))]
    if b2n:
        items, summary[BASE2NOVEL] = base2novel_items(b2n, meta, pub.get(BASE2NOVEL))
        sections.append(("Base-to-novel generalisation", items))
    cross = [g for g in groups if target_sets(g)]
    if cross:
        items, summary[CROSS_DATASET] = cross_dataset_items(cross)
        sections.append(("Cross-data-set transfer", items))
    return sections, summary


def _has_sets(g, names) -> bool:
    return any(all(s in r.metrics for s in names) for r in g.runs)


def target_sets(g) -> list[str]:
    """The target sets every run of the group has, in the first run's order."""
    names = [s for s in g.runs[0].metrics if g.runs[0].roles.get(s) == "target"]
    return [s for s in names if all(s in r.metrics for r in g.runs)]


def base_novel_points(g) -> dict[str, dict[int, tuple[float, float]]]:
    """``{row: {seed: (base top-1, novel top-1)}}`` of one group."""
    return {
        row: {
            s: (p["sets"][BASE_SET], p["sets"][NOVEL_SET])
            for s, p in per_seed.items()
            if BASE_SET in p["sets"] and NOVEL_SET in p["sets"]
        }
        for row, per_seed in g.points.items()
    }


def summarise_base_novel(points: dict[str, dict[int, tuple[float, float]]]) -> dict[str, dict]:
    """``{row: {"n", "base", "novel": stats, "hm": HM of the two means}}``."""
    out = {}
    for row, per_seed in points.items():
        if not per_seed:
            continue
        base = stats([b for b, _ in per_seed.values()])
        novel = stats([n for _, n in per_seed.values()])
        out[row] = {
            "n": len(per_seed),
            "seeds": list(per_seed),
            "base": base,
            "novel": novel,
            "hm": harmonic_mean(base["mean"], novel["mean"]),
        }
    return out


def average_points(per_group: list[dict]) -> dict[str, dict[int, tuple[float, float]]]:
    """Seed by seed, the mean over data sets of base and novel, for rows and seeds every data set has."""
    out = {}
    for row in per_group[0]:
        if not all(row in p for p in per_group):
            continue
        seeds = set.intersection(*(set(p[row]) for p in per_group))
        for s in sorted(seeds):
            out.setdefault(row, {})[s] = (
                sum(p[row][s][0] for p in per_group) / len(per_group),
                sum(p[row][s][1] for p in per_group) / len(per_group),
            )
    return out


def novel_paired(points: dict, meta: dict) -> dict[str, dict]:
    """``{"A − B": {"n", "novel": stats, "base": stats}}`` seed by seed for each trained method (and its
    WiSE-FT row) against the reference and the reference's WiSE-FT row."""
    ref = meta.get("reference")
    if not ref:
        return {}
    refs = [r for r in (ref, wiseft_row(ref)) if r in points]
    out = {}
    for row in points:
        if row in (ZERO_SHOT, ref, wiseft_row(ref)):
            continue
        for against in refs:
            seeds = [s for s in points[row] if s in points[against]]
            if seeds:
                out[f"{row} − {against}"] = {
                    "n": len(seeds),
                    "novel": stats([points[row][s][1] - points[against][s][1] for s in seeds]),
                    "base": stats([points[row][s][0] - points[against][s][0] for s in seeds]),
                    "novel_higher": sum(float(f"{points[row][s][1] - points[against][s][1]:.1f}") > 0 for s in seeds),
                }
    return out


def base2novel_items(groups: list, meta: dict, pub: dict | None) -> tuple[list[Any], dict]:
    from fdalign.experiments.rows import Table

    per_group = [base_novel_points(g) for g in groups]
    blocks = [(f"{g.dataset}, {g.shots}-shot", p, g) for g, p in zip(groups, per_group)]
    if len(groups) > 1:
        blocks.append((f"average of {len(groups)} data sets", average_points(per_group), None))
    shots = sorted({g.shots for g in groups})
    items: list[Any] = [
        "Base = test images of the base classes (the first ceil(n/2) in label order, the only classes trained "
        "and selected on) scored among the base classes; novel = test images of the other classes scored "
        "among the novel classes with their text prototypes; HM = harmonic mean of the mean base and mean "
        "novel top-1 (per data set, and for the average of the data sets' means, as CoCoOp reports it)."
    ]
    summary: dict[str, Any] = {"groups": []}
    ref_pub = _published_average(pub, groups)
    for title, points, g in blocks:
        s = summarise_base_novel(points)
        header = ["method", "seeds", "base", "novel", "HM"]
        with_pub = g is None and ref_pub is not None
        if with_pub:
            header += ["published base / novel / HM", "ours − published (base / novel / HM)"]
        rows = []
        for row, d in s.items():
            cells = [row, str(d["n"]), fmt_pm(d["base"]), fmt_pm(d["novel"]), f"{d['hm']:.1f}"]
            if with_pub:
                p = ref_pub.get(row)
                cells += (
                    [
                        f"{p['base']:.2f} / {p['novel']:.2f} / {p['hm']:.2f}",
                        f"{d['base']['mean'] - p['base']:+.1f} / {d['novel']['mean'] - p['novel']:+.1f} / "
                        f"{d['hm'] - p['hm']:+.1f}",
                    ]
                    if p
                    else ["", ""]
                )
            rows.append(cells)
        items += [f"**{title}**", Table(header, rows)]
        diffs = novel_paired(points, meta)
        if diffs:
            items.append(
                Table(
                    ["paired, per seed", "seeds", "novel Δ", "novel higher in", "base Δ"],
                    [
                        [
                            k,
                            str(v["n"]),
                            fmt_pm(v["novel"], signed=True),
                            f"{v['novel_higher']} of {v['n']}",
                            fmt_pm(v["base"], signed=True),
                        ]
                        for k, v in diffs.items()
                    ],
                )
            )
        summary["groups"].append(
            {
                "title": title,
                "dataset": g.dataset if g is not None else title,
                "shots": g.shots if g is not None else ",".join(map(str, shots)),
                "published": {row: ref_pub[row] for row in s if ref_pub.get(row)} if with_pub else {},
                "rows": s,
                "paired": diffs,
                "per_seed": {row: {str(k): list(v) for k, v in p.items()} for row, p in points.items()},
            }
        )
    if ref_pub is not None:  # the source only where its numbers are shown
        items.append(
            f"Published: {pub['source'].strip()} Shown for the average when the runs are the 11 CoOp data "
            f"sets with `{pub['model']}`."
        )
    return items, summary


def _published_average(pub: dict | None, groups: list) -> dict | None:
    """``{row: {"base", "novel", "hm"}}`` published for the 11-set average, when the groups are those sets
    with the published model; else None."""
    from fdalign.experiments.rows import COOP11

    if (
        not pub
        or {g.dataset_key for g in groups} != COOP11
        or set().union(*(g.model_keys for g in groups)) != {pub["model"]}
    ):
        return None
    out = {}
    for e in pub["entries"]:
        if e["dataset"] == "coop11-mean":
            for m in e["methods"]:
                out[m] = {k: float(e[k]) for k in ("base", "novel", "hm")}
    return out


def cross_dataset_items(groups: list) -> tuple[list[Any], dict]:
    from fdalign.experiments.rows import Table

    items: list[Any] = [
        "Each target scored with the run's encoder and the target's own class names and templates (never used "
        "to select anything); source = the training data set's test split"
        + (
            "; novel = its test images of the classes it was not trained on"
            if any(_has_sets(g, (NOVEL_SET,)) for g in groups)
            else ""
        )
        + "."
    ]
    summary = {"groups": []}
    for g in groups:
        targets = target_sets(g)
        cols = [BASE_SET] + ([NOVEL_SET] if _has_sets(g, (NOVEL_SET,)) else []) + targets
        rows, s = [], {}
        for row, per_seed in g.points.items():
            pts = [p for p in per_seed.values() if all(c in p["sets"] for c in cols)]
            if not pts:
                continue
            d = {c: stats([p["sets"][c] for p in pts]) for c in cols}
            d["target mean"] = stats([sum(p["sets"][t] for t in targets) / len(targets) for p in pts])
            s[row] = d
            rows.append([row, str(len(pts))] + [fmt_pm(d[c]) for c in cols + ["target mean"]])
        header = ["method", "seeds", f"source ({g.dataset})"] + cols[1:] + ["target mean"]
        items += [f"**{g.dataset}, {g.shots}-shot → {len(targets)} targets**", Table(header, rows)]
        summary["groups"].append({"dataset": g.dataset, "shots": g.shots, "targets": targets, "rows": s})
    return items, summary


def protocol_csv_rows(summary: dict) -> list[list[Any]]:
    """The protocols' numbers as rows of the report's CSV (data set, shots, method, metric, seeds, mean,
    std, published, ours minus published): base / novel / HM per data set and their average, and each
    cross-data-set column. HM is one number (the HM of the mean base and novel), so its std is empty."""
    rows: list[list[Any]] = []
    for grp in summary.get(BASE2NOVEL, {}).get("groups", []):
        for row, d in grp["rows"].items():
            pub = grp.get("published", {}).get(row)
            for metric in ("base", "novel", "hm"):
                mean, std = (d[metric], "") if metric == "hm" else (d[metric]["mean"], round(d[metric]["std"], 4))
                theirs = pub[metric] if pub else None
                rows.append(
                    [grp["dataset"], grp["shots"], row, "HM" if metric == "hm" else metric, d["n"], round(mean, 4), std]
                    + (["", ""] if theirs is None else [theirs, round(mean - theirs, 4)])
                )
    for grp in summary.get(CROSS_DATASET, {}).get("groups", []):
        for row, d in grp["rows"].items():
            for metric, v in d.items():
                name = f"source ({grp['dataset']})" if metric == BASE_SET else metric
                n = len(v.get("values", ()))
                rows.append(
                    [grp["dataset"], grp["shots"], row, name, n, round(v["mean"], 4), round(v["std"], 4), "", ""]
                )
    return rows


def base_novel_lines(metrics: dict) -> list[str]:
    """``fdalign train --base-classes``'s summary: base / novel / HM per row of one run's metrics."""
    if BASE_SET not in metrics or NOVEL_SET not in metrics:
        return []
    lines = ["base / novel / harmonic mean (top-1):"]
    for row, m in metrics[BASE_SET].items():
        if row in metrics[NOVEL_SET]:
            b, n = m["top1"], metrics[NOVEL_SET][row]["top1"]
            lines.append(f"  {row}: {b:.2f} / {n:.2f} / {harmonic_mean(b, n):.2f}")
    return lines
