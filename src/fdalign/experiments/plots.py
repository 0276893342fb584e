"""The report's figures (PNG, written atomically): accuracy vs shots, the ID-OOD plane with WiSE-FT
curves, and training curves from each run's ``log.csv``."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from fdalign.experiments.rows import ZERO_SHOT, summarise_group, wiseft_row
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


# One colour per row name, the same in every report and figure (a colour cycle would hand fd-align
# another colour as soon as a report has one row more or less).
FIXED_COLOURS = {
    "zero-shot": "#000000",
    "fine-tune": "#1f77b4",
    "fd-align": "#d62728",
    "wise-ft of fine-tune": "#17becf",
    "wise-ft of fd-align": "#ff7f0e",
    "lp": "#2ca02c",
    "lp-ft": "#9467bd",
    "wise-ft of lp-ft": "#e377c2",
    # the robust fine-tuning comparison (issue 27): a method and its WiSE-FT curve share the colour there
    "logit-kd-b20": "#2ca02c",
    "logit-kd beta:val": "#2ca02c",
    "feature-kd beta:val": "#8c564b",
    "l2-sp beta:val": "#7f7f7f",
    "fd-align beta:val": "#ff7f0e",
    "flyp": "#9467bd",
    "clip-lora": "#e377c2",
    "fd-align-lora": "#bcbd22",
    "fine-tune-lora": "#aec7e8",
    "fd-align-shuffled": "#f7b6d2",
    "fd-align-random": "#c49c94",
}
OTHER_COLOURS = (
    "#8c564b",
    "#bcbd22",
    "#7f7f7f",
    "#aec7e8",
    "#98df8a",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
)


def row_colour(row: str) -> str:
    """The colour of a row (method) in every figure: fixed for the known rows, else chosen by a hash
    of the name (stable across runs and reports, unlike Python's ``hash``)."""
    import zlib

    if row in FIXED_COLOURS:
        return FIXED_COLOURS[row]
    return OTHER_COLOURS[zlib.crc32(row.encode("utf-8")) % len(OTHER_COLOURS)]


def accuracy_vs_shots(groups, out: Path) -> list[Path]:
    """One figure: a column per data set, ID top-1 (and OOD mean, if any) against shots, a line per method."""
    plt = _plt()
    datasets = list(dict.fromkeys(g.dataset for g in groups))
    has_ood = any(g.ood_sets for g in groups)
    nrows = 2 if has_ood else 1
    fig, axes = plt.subplots(nrows, len(datasets), figsize=(4.2 * len(datasets), 3.4 * nrows), squeeze=False)
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
                ax.errorbar(
                    [k for k, _ in pts],
                    [d["mean"] for _, d in pts],
                    yerr=[d["std"] for _, d in pts],
                    marker="o",
                    ms=4,
                    capsize=2,
                    color=row_colour(row),
                    label=row,
                )
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
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    labels: list[tuple[float, float, str, str]] = []
    for m, by_alpha in g.curves.items():
        alphas = sorted(by_alpha)
        xs = [_mean([p["id"] for p in by_alpha[a].values()]) for a in alphas]
        ys = [_mean([p["ood_mean"] for p in by_alpha[a].values()]) for a in alphas]
        c = row_colour(wiseft_row(m))
        ax.plot(xs, ys, "-o", ms=3, color=c, label=f"WiSE-FT of {m}")
        labels += [(x, y, f"{a:g}", c) for a, x, y in zip(alphas, xs, ys)]
        chosen = g.points.get(wiseft_row(m))
        if chosen:
            ax.scatter(
                [_mean([p["id"] for p in chosen.values()])],
                [_mean([p["ood_mean"] for p in chosen.values()])],
                marker="*",
                s=160,
                color=c,
                edgecolor="k",
                zorder=5,
                label=f"{wiseft_row(m)} (val)",
            )
    for row, pts in g.points.items():
        if row in g.curves or row.startswith("wise-ft of ") or not pts:
            continue
        if any(p["ood_mean"] is None for p in pts.values()):  # evaluated without the OOD sets: no place here
            continue
        marker = "s" if row == ZERO_SHOT else "D"
        ax.scatter(
            [_mean([p["id"] for p in pts.values()])],
            [_mean([p["ood_mean"] for p in pts.values()])],
            marker=marker,
            s=45,
            color=row_colour(row),
            label=row,
            zorder=4,
        )
    _place_labels(ax, labels)
    ax.set_xlabel(f"ID top-1 (%), {g.id_set}")
    ax.set_ylabel(f"OOD mean top-1 (%), {len(g.ood_sets)} sets")
    ax.set_title(f"ID vs OOD: {g.title}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _save(fig, out / f"id_ood_{_slug(g.dataset)}_k{g.shots}.png")


def frontier_plot(g, rows: list[str], out: Path) -> Path | None:
    """The ID–OOD frontier of a comparison: for every row its WiSE-FT curve (alpha 0 = zero-shot ... 1 = the
    method) in the row's own fixed colour, a star at the alpha chosen on val; zero-shot a black square. Means
    over seeds. None without OOD sets."""
    if not g.ood_sets:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for row in rows:
        c = row_colour(row)
        by_alpha = g.curves.get(row)
        if by_alpha:
            alphas = sorted(by_alpha)
            xs = [_mean([p["id"] for p in by_alpha[a].values()]) for a in alphas]
            ys = [_mean([p["ood_mean"] for p in by_alpha[a].values()]) for a in alphas]
            ax.plot(xs, ys, "-o", ms=3, color=c, label=row)
        elif g.points.get(row):
            pts = g.points[row]
            marker = "s" if row == ZERO_SHOT else "D"
            ax.scatter(
                [_mean([p["id"] for p in pts.values()])],
                [_mean([p["ood_mean"] for p in pts.values()])],
                marker=marker,
                s=45,
                color=c,
                label=row,
                zorder=4,
            )
        chosen = g.points.get(wiseft_row(row))
        if chosen and by_alpha:
            ax.scatter(
                [_mean([p["id"] for p in chosen.values()])],
                [_mean([p["ood_mean"] for p in chosen.values()])],
                marker="*",
                s=140,
                color=c,
                edgecolor="k",
                zorder=5,
            )
    ax.set_xlabel(f"ID top-1 (%), {g.id_set}")
    ax.set_ylabel(f"OOD mean top-1 (%), {len(g.ood_sets)} sets")
    ax.set_title(f"ID–OOD frontier (WiSE-FT curves, star = alpha chosen on val): {g.title}", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, out / f"frontier_{_slug(g.dataset)}_k{g.shots}.png")


def _place_labels(ax, labels: list[tuple[float, float, str, str]], fontsize: float = 6) -> None:
    """Write each ``(x, y, text, colour)`` beside its point where it overlaps no label already
    written (tried at four corners); a label with no free corner is left out, since the curve's
    other labels and its ordering from 0 to 1 still say which point it is."""
    fig = ax.figure
    ax.autoscale_view()
    renderer = fig.canvas.get_renderer()
    placed: list = []
    offsets = ((3, 3), (3, -9), (-4, 3), (-4, -9))
    for x, y, text, colour in labels:
        for dx, dy in offsets:
            t = ax.annotate(
                text,
                (x, y),
                fontsize=fontsize,
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else "right",
                color=colour,
            )
            box = t.get_window_extent(renderer).expanded(1.1, 1.1)
            if not any(box.overlaps(b) for b in placed):
                placed.append(box)
                break
            t.remove()


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
    # constrained layout makes room for each panel's tick labels (the LR axis ran into the KL panel)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3), layout="constrained")
    for r, path in logs:
        d = read_log(path)
        if not d:
            continue
        for ax, key in zip(axes, ("ce", "kl", "lr")):
            ax.plot(
                d["step"],
                d[key],
                color=row_colour(r.method),
                lw=0.9,
                alpha=0.8,
                label=r.method if r.seed == min(x.seed for x, _ in logs if x.method == r.method) else None,
            )
    for ax, key in zip(axes, ("cross-entropy", "spurious KL", "learning rate")):
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # 1e-4 as "1" and "1e-4" once
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Training curves: {g.title}", fontsize=10)
    return _save(fig, out / f"training_{_slug(g.dataset)}_k{g.shots}.png")


def accuracy_by_set(g, out: Path) -> Path | None:
    """Grouped bars for one data set and shot count: the ID set, each OOD set and the OOD mean; a bar
    per row (mean over seeds, std as error bar). None without OOD sets."""
    if not g.ood_sets:
        return None
    import numpy as np

    plt = _plt()
    s = summarise_group(g)
    keys = ["id"] + g.ood_sets + ["ood_mean"]
    labels = [f"{g.id_set}\n(ID)"] + g.ood_sets + ["OOD mean"]
    rows = list(s)
    width = 0.8 / len(rows)
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(keys)), 4.2))
    for i, row in enumerate(rows):
        ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            [s[row][k]["mean"] if k in s[row] else float("nan") for k in keys],  # not evaluated there: no bar
            width,
            yerr=[s[row][k]["std"] if k in s[row] else 0.0 for k in keys],
            capsize=2,
            label=row,
            color=row_colour(row),
        )
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    ax.axvline(len(keys) - 1.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Accuracy by set: {g.title} (mean ± std over seeds)", pad=26, fontsize=10)
    ax.legend(ncol=min(len(rows), 5), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / f"accuracy_by_set_{_slug(g.dataset)}_k{g.shots}.png")


# ----------------------------------------------------------------------------------------------
# figures that need the trained models: t-SNE of image features, spurious distributions


def _sample(split, per_class: int):
    """The first ``per_class`` images of every class (deterministic, no RNG)."""
    seen: dict[int, int] = {}
    keep = []
    for i, s in enumerate(split.samples):
        if seen.get(s.label, 0) < per_class:
            seen[s.label] = seen.get(s.label, 0) + 1
            keep.append(i)
    return split.subset(keep)


def model_features(g, methods: list[str], per_class: int = 2, device: str = "cpu") -> dict | None:
    """Features of zero-shot CLIP and of each method's fine-tuned encoder (first seed that has all),
    on a few images per class of the ID test set and of every OOD set.

    Returns ``{"feats": {model: [N, D]}, "labels": [N], "domains": [N] set names, "classnames",
    "images": the ID images' paths, "run": the reference run}`` or None when the runs or their data
    are not available here.
    """
    import copy

    import torch

    from fdalign.data import ImageDataset, load_ood_sets, open_dataset
    from fdalign.errors import FDAlignError
    from fdalign.workflows.parts import extract_features, load_run, load_run_model

    by_seed: dict[int, dict] = {}
    for r in g.runs:
        by_seed.setdefault(r.seed, {})[r.method] = r
    seeds = [s for s, d in sorted(by_seed.items()) if all(m in d for m in methods)]
    if not seeds:
        return None
    runs = by_seed[seeds[0]]
    try:
        first = load_run(runs[methods[0]].dir, device=device)
        cfg = first.config
        splits = open_dataset(cfg.data, cfg.image_root, cfg.classnames)
        test = splits.get("test")
        if test is None:
            return None
        sets = [(g.id_set, _sample(test, per_class))]
        for name, split, _ in load_ood_sets(
            cfg.ood, list(test.classnames), test.class_keys, reserved={"test", "val", "train"}
        ):
            sets.append((name, _sample(split, per_class)))
        tf = first.backend.preprocess_eval()
        encoders = {"zero-shot": first.zero_shot_encoder().to(device), methods[0]: first.backend.image_encoder}
        for m in methods[1:]:  # same base model: only the fine-tuned weights differ
            enc = copy.deepcopy(first.backend.image_encoder)
            saved = load_run_model(runs[m].dir).encoder
            ref = enc.state_dict()
            enc.load_state_dict({k: v.to(ref[k].dtype) if v.is_floating_point() else v for k, v in saved.items()})
            encoders[m] = enc
    except (FDAlignError, OSError):
        return None  # data or models moved: the other figures do not need them
    feats: dict[str, torch.Tensor] = {}
    labels, domains = [], []
    for name, split in sets:
        labels += split.labels
        domains += [name] * len(split)
    for model, enc in encoders.items():
        parts = [
            extract_features(enc, ImageDataset(split, tf), batch_size=64, device=device, progress=False)[0]
            for _, split in sets
        ]
        feats[model] = torch.cat(parts).float()
    return {
        "feats": feats,
        "labels": labels,
        "domains": domains,
        "classnames": list(test.classnames),
        "images": [test.resolve(s) for s in sets[0][1].samples],
        "n_id": len(sets[0][1]),
        "run": first,
    }


def tsne_plot(g, data: dict, out: Path) -> Path:
    """The paper's figure: t-SNE of image features per model, colour = class, marker = domain (set)."""
    import numpy as np
    from sklearn.manifold import TSNE

    plt = _plt()
    models = list(data["feats"])
    domains = list(dict.fromkeys(data["domains"]))
    markers = "o^sDvP*Xh<>p"
    labels = np.array(data["labels"])
    dom = np.array(data["domains"])
    fig, axes = plt.subplots(1, len(models), figsize=(4.3 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models):
        x = data["feats"][m]
        x = (x / x.norm(dim=-1, keepdim=True)).numpy()
        # exact gradients: for the few hundred points drawn here it is faster than Barnes-Hut
        emb = TSNE(
            n_components=2,
            perplexity=min(30.0, max(2.0, (len(x) - 1) / 3)),
            init="pca",
            random_state=0,
            method="exact" if len(x) <= 1000 else "barnes_hut",
            max_iter=500,
        ).fit_transform(x)
        for j, d in enumerate(domains):
            sel = dom == d
            ax.scatter(
                emb[sel, 0],
                emb[sel, 1],
                c=labels[sel],
                cmap="tab20",
                vmin=0,
                vmax=max(19, labels.max()),
                marker=markers[j % len(markers)],
                s=14 if j else 22,
                alpha=0.8,
                edgecolor="k" if j == 0 else "none",
                linewidth=0.4,
                label=d,
            )
        ax.set_title(m, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=6, markerscale=0.8, title="set (marker)", title_fontsize=6)
    _class_legend(fig, axes[0][-1], data["classnames"], labels, vmax=max(19, int(labels.max())))
    fig.suptitle(f"t-SNE of image features: {g.title}", fontsize=10)
    return _save(fig, out / f"tsne_{_slug(g.dataset)}_k{g.shots}.png")


def _class_legend(fig, ax, classnames: list[str], labels, vmax: int, limit: int = 20) -> None:
    """Which colour is which class, beside the last panel: every class up to ``limit`` classes, else
    the count (a thousand names would hide the figure)."""
    from matplotlib.lines import Line2D

    shown = sorted(set(int(x) for x in labels))
    if len(shown) > limit:
        ax.text(1.02, 0.5, f"colour = class\n({len(shown)} classes)", transform=ax.transAxes, fontsize=7, va="center")
        return
    cmap = _plt().get_cmap("tab20")
    handles = [
        Line2D([], [], ls="", marker="o", ms=5, color=cmap(c / vmax if vmax else 0), label=classnames[c]) for c in shown
    ]
    # a figure legend: the panel's own legend (the sets' markers) stays where it is
    fig.legend(
        handles=handles,
        fontsize=6,
        title="class (colour)",
        title_fontsize=6,
        loc="center left",
        bbox_to_anchor=(ax.get_position().x1 + 0.01, 0.5),
        frameon=False,
    )


def prototype_labels(protos, width: int = 40) -> list[str]:
    """A name per prototype of the spurious loss (``protos``: :class:`~fdalign.prototypes.Prototypes`):
    its template, or after SPC's clustering the kept template nearest each centre, marked "≈" (a centre
    is no template). Cut to ``width`` characters for a figure's axis."""
    import torch

    if protos.corrected_prototypes is None:
        names = list(protos.templates)
    else:
        kept = [i for i, t in enumerate(protos.templates) if t in set(protos.kept_templates)]
        centres = torch.nn.functional.normalize(protos.corrected_prototypes.float(), dim=-1)
        cos = centres @ protos.spurious_prototypes[kept].float().t()  # [k, kept]
        clustered = len(centres) < len(kept)  # else SPC kept the templates themselves
        names = [("≈ " if clustered else "") + protos.templates[kept[j]] for j in cos.argmax(dim=1).tolist()]
    return [n if len(n) <= width else n[: width - 1] + "…" for n in names]


def spurious_plot(g, data: dict, out: Path, images: int = 3) -> Path:
    """P_spur(x; f) of a few ID test images under zero-shot CLIP and each fine-tuned encoder."""
    import torch

    from fdalign.losses import cosine_logits
    from fdalign.prompts import load_templates
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig

    run = data["run"]
    cfg = run.config
    spc = (
        SPCConfig(keep=cfg.spc_keep, k=cfg.spc_k, seed=cfg.spc_seed, renormalize=cfg.spc_renormalize)
        if cfg.spc
        else None
    )
    protos = build_prototypes(run.backend, data["classnames"], load_templates(cfg.templates), spc=spc)
    spurious = protos.loss_prototypes
    names = prototype_labels(protos)
    scale = float(cfg.temperature if cfg.temperature is not None else run.backend.logit_scale)
    normalize = not (cfg.spc and not cfg.spc_renormalize)
    plt = _plt()
    from PIL import Image

    n = min(images, data["n_id"])
    step = max(1, data["n_id"] // n)
    idx = list(range(0, data["n_id"], step))[:n]
    k = spurious.shape[0]
    label_h = 0.07 * max(len(x) for x in names)  # inches under the last panel for the templates, written upright
    fig, axes = plt.subplots(
        n, 2, figsize=(max(10, 0.16 * k + 2), 2.2 * n + label_h), squeeze=False, gridspec_kw={"width_ratios": [1, 5]}
    )
    for row, i in enumerate(idx):
        axes[row][0].imshow(Image.open(data["images"][i]).convert("RGB"))
        axes[row][0].set_axis_off()
        axes[row][0].set_title(data["classnames"][data["labels"][i]], fontsize=8)
        ax = axes[row][1]
        width = 0.8 / len(data["feats"])
        for j, (m, f) in enumerate(data["feats"].items()):
            with torch.no_grad():
                p = torch.softmax(cosine_logits(f[i : i + 1], spurious, scale, normalize).float(), dim=-1)[0]
            ax.bar(
                [x + (j - (len(data["feats"]) - 1) / 2) * width for x in range(k)],
                p.numpy(),
                width,
                label=m,
                color=row_colour(m),
            )
        ax.set_ylabel("P_spur", fontsize=8)
        ax.set_xlim(-0.6, k - 0.4)
        ax.set_xticks(range(k), names if row == n - 1 else [""] * k)  # the templates, not their indices
        ax.grid(axis="y", alpha=0.3)
    axes[-1][1].tick_params(axis="x", labelrotation=90, labelsize=max(4, min(7, 480 // max(k, 1))))
    axes[0][1].legend(fontsize=7, ncol=len(data["feats"]))
    what = "SPC-corrected, the nearest kept template" if cfg.spc else "one per template"
    axes[-1][1].set_xlabel(f"spurious prototype ({what}, k = {k})")
    fig.suptitle(f"Spurious distribution before and after fine-tuning: {g.title}", fontsize=10)
    return _save(fig, out / f"spurious_{_slug(g.dataset)}_k{g.shots}.png")
