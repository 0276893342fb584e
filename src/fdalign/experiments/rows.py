"""The rows of a report table and their numbers over seeds, shared by the report, its figures and
the protocols' tables (which is why they live here: ``plots`` and ``protocols`` never import ``report``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ZERO_SHOT = "zero-shot"
COOP11 = frozenset(
    {
        "imagenet",
        "caltech101",
        "oxfordpets",
        "stanfordcars",
        "flowers102",
        "food101",
        "aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    }
)


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


def wiseft_row(method: str) -> str:
    return f"wise-ft of {method}"


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    from fdalign.workflows.parts import mean_std as ms

    return ms(values)


def stats(values: list[float]) -> dict:
    """``{"mean", "std", "values"}`` (sample std; 0 for one value, which :func:`fmt_pm` never prints)."""
    m, s = mean_std(values)
    return {"mean": m, "std": s, "values": list(values)}


def fmt_pm(d: dict, signed: bool = False) -> str:
    """``54.2 ± 2.0``; one value alone is printed without a spread, since there is none to print
    (the table's seed column says n = 1)."""
    sign = "+" if signed else ""
    text = f"{d['mean']:{sign}.1f}"
    return text if len(d.get("values", ())) == 1 else f"{text} ± {d['std']:.1f}"


def summarise_group(g) -> dict[str, dict]:
    """``{row: {"n", "id", "ood_mean", <ood set>...: {"mean", "std", "values"}, "alpha"?}}`` of a report group
    (``points[row][seed]`` = ``{"id", "ood_mean", "sets"}``); values in seed order. A row without
    seeds is left out; an OOD set (or the OOD mean) that not every seed of a row has is left out of
    that row (a cache head evaluated without OOD sets), never averaged over fewer seeds."""
    out = {}
    for row, per_seed in g.points.items():
        pts = list(per_seed.values())
        if not pts:
            continue
        d = {"n": len(pts), "seeds": list(per_seed), "id": stats([p["id"] for p in pts])}
        if all(p["ood_mean"] is not None for p in pts):
            d["ood_mean"] = stats([p["ood_mean"] for p in pts])
        for s in g.ood_sets:
            if all(s in p["sets"] for p in pts):
                d[s] = stats([p["sets"][s] for p in pts])
        if all("alpha" in p for p in pts):  # a WiSE-FT row: the mixing weight each seed chose on val
            d["alpha"] = [p["alpha"] for p in pts]
        out[row] = d
    return out
