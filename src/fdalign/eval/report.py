"""``metrics.json`` and a human-readable ``report.md`` for an evaluation.

The metrics layout is the one :func:`fdalign.eval.pipeline.run_evaluation` returns,
``{set: {model: {"top1", "top5", "n"}}}``; the report turns it into one table with a row per
model, the in-distribution top-1/top-5, each OOD set's top-1 and the OOD average.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from fdalign.io import atomic_write_text

METRICS_FORMAT = "fdalign-metrics/1"


def split_roles(metrics: dict, roles: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(ID set names, OOD set names). Without ``roles`` the first set is ID and the rest OOD."""
    names = list(metrics)
    if roles is None:
        return names[:1], names[1:]
    return [n for n in names if roles.get(n, "test") != "ood"], [n for n in names if roles.get(n) == "ood"]


def ood_average(metrics: dict, ood_sets: Sequence[str], model: str, key: str = "top1") -> float | None:
    """Unweighted mean of ``key`` over the OOD sets (as the paper reports it); None without OOD sets."""
    vals = [metrics[s][model][key] for s in ood_sets if model in metrics[s]]
    if not vals or len(vals) != len(ood_sets):
        return None
    return sum(vals) / len(vals)


def write_metrics(run_dir: str | os.PathLike, metrics: dict, extra: dict | None = None) -> Path:
    """Write ``<run_dir>/metrics.json``: ``{"format", "metrics", **extra}`` (atomic).

    Useful ``extra`` keys: ``roles`` (set -> test/val/ood), ``ood_average`` (filled in here when
    ``roles`` is given), ``hashes``, ``model``, ``config``.
    """
    doc = {"format": METRICS_FORMAT, "metrics": metrics}
    doc.update(extra or {})
    if "roles" in doc and "ood_average" not in doc:
        _, ood = split_roles(metrics, doc["roles"])
        models = list(next(iter(metrics.values()), {}))
        avg = {m: ood_average(metrics, ood, m) for m in models}
        if ood:
            doc["ood_average"] = {m: {"top1": a} for m, a in avg.items() if a is not None}
    return atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.2f}"


def metrics_table(metrics: dict, roles: dict[str, str] | None = None) -> str:
    """A markdown table: one row per model; ID top-1/top-5, each OOD set's top-1, OOD average."""
    id_sets, ood_sets = split_roles(metrics, roles)
    models: list[str] = []
    for per_set in metrics.values():
        models += [m for m in per_set if m not in models]
    header = ["model"]
    for s in id_sets:
        header += [f"{s} top-1", f"{s} top-5"]
    header += [f"{s} top-1" for s in ood_sets]
    if ood_sets:
        header.append("OOD avg top-1")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for m in models:
        row = [m]
        for s in id_sets:
            r = metrics[s].get(m, {})
            row += [_fmt(r.get("top1")), _fmt(r.get("top5"))]
        row += [_fmt(metrics[s].get(m, {}).get("top1")) for s in ood_sets]
        if ood_sets:
            row.append(_fmt(ood_average(metrics, ood_sets, m)))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _set_sizes(metrics: dict) -> str:
    parts = []
    for s, per_model in metrics.items():
        n = next((r.get("n") for r in per_model.values() if "n" in r), None)
        parts.append(f"{s}: {n} images" if n is not None else s)
    return "; ".join(parts)


def _kv_lines(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and "chosen" in v:
            # a selection record (fdalign.selection): say what won, on which data, by what
            text = f"{v['chosen']}"
            if v.get("on"):
                text += f", chosen on {v['on']}"
            if v.get("metric") is not None and v.get("score") is not None:
                score = v["score"]
                text += (
                    f" by {v['metric']} = {score:.2f}" if isinstance(score, float) else f" by {v['metric']} = {score}"
                )
            v = text
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, ensure_ascii=False)
        out.append(f"- **{k}**: {v}")
    return out


def render_report(
    metrics: dict,
    *,
    selection: dict | None = None,
    config: dict | None = None,
    hashes: dict | None = None,
    roles: dict[str, str] | None = None,
    title: str = "fdalign evaluation",
    classes: dict[str, dict] | None = None,
    class_table: Sequence[tuple[int, str, str]] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The text of ``report.md`` (see :func:`write_report`)."""
    id_sets, ood_sets = split_roles(metrics, roles)
    lines = [f"# {title}", ""]
    lines += [f"**{n}**" for n in notes] + ([""] if notes else [])
    if metrics:
        lines.append(
            f"Accuracy in percent. In-distribution: {', '.join(id_sets) or '–'}; "
            f"out-of-distribution: {', '.join(ood_sets) or 'none'}"
            + (" (OOD avg = unweighted mean of the OOD sets' top-1)." if ood_sets else ".")
        )
        lines += ["", metrics_table(metrics, roles), "", f"Set sizes: {_set_sizes(metrics)}.", ""]
    else:
        lines += ["No set was evaluated.", ""]
    if classes:
        lines += _classes_section(classes)
    lines += ["## What was selected on what", ""]
    if selection:
        lines += _kv_lines(selection)
    else:
        lines.append("Nothing was selected on data: the numbers above come from fixed settings.")
    lines.append("")
    if hashes:
        lines += ["## Data", "", "| set | hash |", "|---|---|"]
        lines += [f"| {k} | `{v}` |" for k, v in hashes.items()]
        lines.append("")
    if config:
        lines += ["## Settings", ""] + _kv_lines(config) + [""]
    if class_table:
        lines += [
            "## Class names used",
            "",
            "Labels are the sorted class folders; the plain --classnames list was applied in that order. "
            "Check that every folder got its own name.",
            "",
            "| label | folder | name |",
            "|---:|---|---|",
        ]
        lines += [f"| {i} | {k} | {n} |" for i, k, n in class_table]
        lines.append("")
    return "\n".join(lines)


def _classes_section(classes: dict[str, dict]) -> list[str]:
    """Which sets were scored over fewer classes than the head has, and whether that was declared."""
    lines = [
        "## Classes per set",
        "",
        "| set | classes scored | logits restricted | declared subset | missing |",
        "|---|---:|---|---|---|",
    ]
    for name, c in classes.items():
        missing = ", ".join(c.get("missing") or []) or "–"
        if c.get("num_missing", 0) > len(c.get("missing") or []):
            missing += f" ... ({c['num_missing']} in all)"
        declared = "yes" if c.get("declared_subset") else ("no (warned)" if c.get("restricted") else "–")
        lines.append(
            f"| {name} | {c['classes']} of {c['of']} | {'yes' if c.get('restricted') else 'no'} | "
            f"{declared} | {missing} |"
        )
    return lines + [""]


def write_report(run_dir: str | os.PathLike, metrics: dict, **sections) -> Path:
    """Write ``<run_dir>/report.md`` (atomic): :func:`render_report` of ``metrics`` and ``sections``: the
    accuracy table, what was selected on which data (``selection``, e.g. ``{"epoch": "best val top-1
    (epoch 7)", "val set": "4/class, hash …"}``), the data hashes and the settings. ``classes`` (set ->
    :func:`fdalign.eval.metrics.class_coverage`) says which sets were scored over a subset of the
    classes; ``class_table`` (``[(label, folder, name)]``) lists the names a plain class-name list gave;
    ``notes`` go first, in bold."""
    text = render_report(metrics, **sections)
    return atomic_write_text(Path(run_dir) / "report.md", text)
