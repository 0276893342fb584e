"""The report's figures (PNG, written atomically): accuracy vs shots, the ID-OOD plane with WiSE-FT
curves, and training curves from each run's ``log.csv``."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from fdalign.io import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _mean(vals):
    return sum(vals) / len(vals)


def accuracy_vs_shots(groups, out: Path) -> list[Path]:
    """One figure: a column per data set, ID top-1 (and OOD mean, if any) against shots, a line per method."""
    from fdalign.experiments.report import summarise_group

    plt = _plt()
    datasets = list(dict.fromkeys(g.dataset for g in groups))
    has_ood = any(g.ood_sets for g in groups)
    nrows = 2 if has_ood else 1
    fig, axes = plt.subplots(nrows, len(datasets), figsize=(4.2 * len(datasets), 3.4 * nrows), squeeze=False)
    colours: dict[str, str] = {}
    for j, ds in enumerate(datasets):
        gs = sorted((g for g in groups if g.dataset == ds), key=lambda g: g.shots)
        summaries = [(g.shots, summarise_group(g)) for g in gs]
        rows = list(dict.fromkeys(r for _, s in summaries for r in s))
        for i, key in enumerate(["id", "ood_mean"][:nrows]):
            ax = axes[i][j]
            for row in rows:
                pts = [(k, s[row][key]) for k, s in summaries if row in s and key in s[row]]
                if not pts:
                    continue
                c = colours.setdefault(row, f"C{len(colours) % 10}")
                ax.errorbar([k for k, _ in pts], [d["mean"] for _, d in pts], yerr=[d["std"] for _, d in pts],
                            marker="o", ms=4, capsize=2, color=c, label=row)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({g.shots for g in gs}), [str(k) for k in sorted({g.shots for g in gs})])
            ax.set_title(f"{ds}: {'ID' if key == 'id' else 'OOD mean'}", fontsize=9)
            ax.set_xlabel("shots per class")
            ax.set_ylabel("top-1 (%)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return [_save(fig, out / "accuracy_vs_shots.png")]


def id_ood_plane(g, out: Path) -> Path | None:
    """ID top-1 against OOD mean (means over seeds): a WiSE-FT curve per fine-tuned method, a star at the
    alpha chosen on val, a dot per other row. None when the group has no OOD sets."""
    if not g.ood_sets:
        return None
    from fdalign.experiments.report import ZERO_SHOT, wiseft_row

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for i, (m, by_alpha) in enumerate(g.curves.items()):
        alphas = sorted(by_alpha)
        xs = [_mean([p["id"] for p in by_alpha[a].values()]) for a in alphas]
        ys = [_mean([p["ood_mean"] for p in by_alpha[a].values()]) for a in alphas]
        ax.plot(xs, ys, "-o", ms=3, color=f"C{i}", label=f"WiSE-FT of {m}")
        for a, x, y in zip(alphas, xs, ys):
            ax.annotate(f"{a:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        chosen = g.points.get(wiseft_row(m))
        if chosen:
            ax.scatter([_mean([p["id"] for p in chosen.values()])], [_mean([p["ood_mean"] for p in chosen.values()])],
                       marker="*", s=160, color=f"C{i}", edgecolor="k", zorder=5, label=f"{wiseft_row(m)} (val)")
    k = len(g.curves)
    for row, pts in g.points.items():
        if row in g.curves or row.startswith("wise-ft of ") or not pts:
            continue
        marker = "s" if row == ZERO_SHOT else "D"
        ax.scatter([_mean([p["id"] for p in pts.values()])], [_mean([p["ood_mean"] for p in pts.values()])],
                   marker=marker, s=45, color="k" if row == ZERO_SHOT else f"C{k}", label=row, zorder=4)
        k += row != ZERO_SHOT
    ax.set_xlabel(f"ID top-1 (%), {g.id_set}")
    ax.set_ylabel(f"OOD mean top-1 (%), {len(g.ood_sets)} sets")
    ax.set_title(f"ID vs OOD: {g.title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out / f"id_ood_{_slug(g.dataset)}_k{g.shots}.png")


def read_log(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows] for k in ("step", "ce", "kl", "lr")} if rows else {}


def training_curves(g, out: Path) -> Path | None:
    """CE, KL and LR against the step for every run of the group (colour = method, one line per seed)."""
    logs = [(r, r.dir / "log.csv") for r in g.runs if (r.dir / "log.csv").is_file()]
    if not logs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    methods = list(dict.fromkeys(r.method for r, _ in logs))
    for r, path in logs:
        d = read_log(path)
        if not d:
            continue
        c = f"C{methods.index(r.method)}"
        for ax, key in zip(axes, ("ce", "kl", "lr")):
            ax.plot(d["step"], d[key], color=c, lw=0.9, alpha=0.8,
                    label=r.method if r.seed == min(x.seed for x, _ in logs if x.method == r.method) else None)
    for ax, key in zip(axes, ("cross-entropy", "spurious KL", "learning rate")):
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Training curves: {g.title}", fontsize=10)
    return _save(fig, out / f"training_{_slug(g.dataset)}_k{g.shots}.png")


def accuracy_by_set(g, out: Path) -> Path | None:
    """Grouped bars for one data set and shot count: the ID set, each OOD set and the OOD mean; a bar
    per row (mean over seeds, std as error bar). None without OOD sets."""
    if not g.ood_sets:
        return None
    import numpy as np

    from fdalign.experiments.report import summarise_group

    plt = _plt()
    s = summarise_group(g)
    keys = ["id"] + g.ood_sets + ["ood_mean"]
    labels = [f"{g.id_set}\n(ID)"] + g.ood_sets + ["OOD mean"]
    rows = list(s)
    width = 0.8 / len(rows)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(keys)), 4.2))
    for i, row in enumerate(rows):
        ax.bar(x + (i - (len(rows) - 1) / 2) * width, [s[row][k]["mean"] for k in keys], width,
               yerr=[s[row][k]["std"] for k in keys], capsize=2, label=row)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.axvline(len(keys) - 1.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Accuracy by set: {g.title} (mean ± std over seeds)", pad=26, fontsize=10)
    ax.legend(ncol=min(len(rows), 5), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / f"accuracy_by_set_{_slug(g.dataset)}_k{g.shots}.png")
