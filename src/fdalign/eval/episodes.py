"""N-way K-shot evaluation: mean accuracy over many episodes with a 95% confidence interval.

Each image an episode may use is encoded once per encoder (:func:`fdalign.eval.extract_features`);
the episodes are sampled on indices (:mod:`fdalign.data.episodes`) and scored in chunks of many
episodes, each chunk one gather plus one batched matrix product (:mod:`fdalign.heads.episodes`).

The interval is the usual one over episodes, ``mean ± 1.96 * std / sqrt(n)`` (``std`` the sample
standard deviation of the per-episode accuracies). With ``runs > 1`` the authors' variant is
reported too: ``mean ± 1.96 * std`` of the ``runs`` run means (their released code repeats the
test 5 times), labelled ``released_ci95``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from fdalign.data.episodes import ClassPool, Episodes, EpisodeSpec, class_pool, episode_labels, sample_episodes
from fdalign.eval.metrics import mean_std
from fdalign.heads.episodes import EPISODE_HEADS, PROTO_SCALE_INIT, episode_logits

Z95 = 1.96


def mean_ci(accuracies: Sequence[float]) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` of per-episode accuracies (sample std, n - 1)."""
    m, s = mean_std(accuracies)
    n = len(accuracies)
    return m, (Z95 * s / math.sqrt(n) if n else float("nan"))


def released_interval(run_means: Sequence[float]) -> tuple[float, float]:
    """The authors' variant: ``(mean, 1.96 * std)`` of the means of repeated runs."""
    m, s = mean_std(run_means)
    return m, Z95 * s


@torch.no_grad()
def episode_accuracy(
    features: torch.Tensor,
    episodes: Episodes,
    spec: EpisodeSpec,
    head: str = "proto",
    *,
    proto_scale: float = PROTO_SCALE_INIT,
    class_prototypes: torch.Tensor | None = None,
    text_scale: float = 100.0,
    weight: float = 0.5,
    chunk: int = 128,
) -> torch.Tensor:
    """Per-episode query accuracy in percent, ``[E]``.

    Args:
        features: ``[S, D]`` features of the split's samples (row = sample index of ``episodes``).
        episodes: ``E`` episodes on that split; class_prototypes: ``[C, D]`` text prototypes of
            the split's classes (``text`` / ``combined`` heads).
        chunk: episodes scored per batched tensor operation.
    """
    feats = F.normalize(features.float(), dim=-1)  # once, for every episode
    dev = feats.device
    labels = torch.as_tensor(episode_labels(spec)[1], device=dev)
    protos = None if class_prototypes is None else F.normalize(class_prototypes.to(dev).float(), dim=-1)
    out = []
    for a in range(0, len(episodes), chunk):
        sup = torch.as_tensor(episodes.support[a : a + chunk], device=dev)
        qry = torch.as_tensor(episodes.query[a : a + chunk], device=dev)
        e, d = sup.shape[0], feats.shape[1]
        logits = episode_logits(
            head,
            feats.index_select(0, sup.reshape(-1)).reshape(e, -1, d),
            feats.index_select(0, qry.reshape(-1)).reshape(e, -1, d),
            spec.n_way,
            proto_scale=proto_scale,
            class_prototypes=protos,
            classes=torch.as_tensor(episodes.classes[a : a + chunk], device=dev),
            text_scale=text_scale,
            weight=weight,
            unit=True,
        )
        right = (logits.argmax(-1) == labels) & torch.isfinite(logits).all(-1)  # a NaN row's argmax is no answer
        out.append(right.float().mean(-1) * 100.0)
    return torch.cat(out).cpu() if out else torch.empty(0)


@dataclass
class EpisodeEvalSettings:
    """What :func:`evaluate_episodes` runs: ``runs x episodes`` episodes of each spec and head."""

    specs: list[EpisodeSpec] = field(default_factory=lambda: [EpisodeSpec(5, 1, 15), EpisodeSpec(5, 5, 15)])
    episodes: int = 2000
    seed: int = 0
    heads: tuple[str, ...] = EPISODE_HEADS
    runs: int = 1
    on_small: str = "skip"
    weight: float = 0.5
    text_scale: float = 100.0
    chunk: int = 128


@dataclass
class EpisodeTarget:
    """A split to draw test episodes from, with the text prototypes of its classes (``[C, D]`` or None)."""

    name: str
    split: object  # LabeledSplit
    class_prototypes: torch.Tensor | None = None


def plan_episodes(split, settings: EpisodeEvalSettings) -> dict[str, tuple[ClassPool, Episodes]]:
    """``{spec name: (pool, episodes)}`` and nothing encoded yet; episode numbers ``0 .. runs*episodes - 1``."""
    total = settings.episodes * settings.runs
    plans = {}
    for spec in settings.specs:
        pool = class_pool(split, spec, settings.on_small)
        plans[spec.name] = (pool, sample_episodes(pool, spec, settings.seed, range(total)))
    return plans


def used_samples(plans: dict[str, tuple[ClassPool, Episodes]]) -> np.ndarray:
    """Sorted sample indices that any planned episode reads (the only images worth encoding)."""
    parts = [np.concatenate([ep.support.reshape(-1), ep.query.reshape(-1)]) for _, ep in plans.values()]
    return np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)


def reindex(episodes: Episodes, used: np.ndarray, size: int) -> Episodes:
    """``episodes`` with sample indices into ``split.subset(used)`` instead of the ``size``-sample split."""
    position = np.full(size, -1, dtype=np.int64)
    position[used] = np.arange(len(used))
    return Episodes(episodes.classes, position[episodes.support], position[episodes.query], episodes.index)


def summarize(acc: torch.Tensor, runs: int) -> dict:
    """Mean, interval and sizes of per-episode accuracies (``runs`` equal consecutive runs)."""
    vals = acc.tolist()
    m, h = mean_ci(vals)
    row = {"mean": m, "ci95": h, "std": mean_std(vals)[1], "episodes": len(vals)}
    if runs > 1:
        run_means = acc.reshape(runs, -1).mean(1).tolist()
        rm, rh = released_interval(run_means)
        row.update(runs=runs, run_means=run_means, released_ci95=rh)
    return row


def evaluate_episodes(
    models: dict[str, tuple[torch.nn.Module, float]],
    targets: Sequence[EpisodeTarget],
    settings: EpisodeEvalSettings,
    *,
    transform,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    num_workers: int = 0,
    progress: bool = False,
) -> tuple[dict, dict]:
    """Score ``{model name: (encoder, proto scale)}`` on every target, spec and head.

    Returns ``(metrics, skipped)``: ``metrics[target][spec name][model][head]`` is a
    :func:`summarize` row (accuracies in percent); ``skipped[target][spec name]`` counts the classes
    left out for having fewer than K+Q images. Every model sees the same episodes.
    """
    from fdalign.data.datasets import ImageDataset
    from fdalign.eval.features import extract_features

    metrics: dict = {}
    skipped: dict = {}
    for target in targets:
        plans = plan_episodes(target.split, settings)
        used = used_samples(plans)
        ds = ImageDataset(target.split.subset(used.tolist()), transform)
        heads = [h for h in settings.heads if h == "proto" or target.class_prototypes is not None]
        per_spec: dict = {name: {} for name in plans}
        for model, (encoder, proto_scale) in models.items():
            feats, _ = extract_features(
                encoder,
                ds,
                batch_size=batch_size,
                device=device,
                num_workers=num_workers,
                precision=precision,
                progress=progress,
                desc=f"{target.name} ({model})",
            )
            feats = feats.to(device)
            for name, (pool, eps) in plans.items():
                remapped = reindex(eps, used, len(target.split))
                spec = next(s for s in settings.specs if s.name == name)
                per_spec[name][model] = {
                    h: summarize(
                        episode_accuracy(
                            feats,
                            remapped,
                            spec,
                            h,
                            proto_scale=proto_scale,
                            class_prototypes=target.class_prototypes,
                            text_scale=settings.text_scale,
                            weight=settings.weight,
                            chunk=settings.chunk,
                        ),
                        settings.runs,
                    )
                    for h in heads
                }
        metrics[target.name] = per_spec
        skipped[target.name] = {name: len(pool.skipped) for name, (pool, _) in plans.items()}
    return metrics, skipped


def episodes_table(metrics: dict) -> str:
    """Markdown: a row per (model, head), a column per (target, setting), cells ``mean ± ci95``."""
    cols = [(t, s) for t, per in metrics.items() for s in per]
    rows: list[tuple[str, str]] = []
    for t, s in cols:
        for model, per_head in metrics[t][s].items():
            rows += [(model, h) for h in per_head if (model, h) not in rows]
    header = ["model", "head"] + [f"{t} {s}" for t, s in cols]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * len(cols)]
    for model, h in rows:
        cells = []
        for t, s in cols:
            r = metrics[t][s].get(model, {}).get(h)
            cells.append("–" if r is None else f"{r['mean']:.2f} ± {r['ci95']:.2f}")
        lines.append(f"| {model} | {h} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


HEAD_DESCRIPTIONS = {
    "proto": "ProtoNet: cosine to the mean of the L2-normalised support features",
    "text": "zero-shot text prototypes of the episode's class names (support images unused)",
    "combined": "product of experts of proto and text (mean of their log-probabilities)",
}


def render_episode_report(
    metrics: dict, *, title: str, settings: dict, selection: dict | None = None, hashes: dict | None = None
) -> str:
    """The text of an episode ``report.md``: the table, what each head is, what was selected, settings."""
    lines = [
        f"# {title}",
        "",
        "Mean query accuracy (%) over episodes ± 95% interval (1.96·std/√episodes).",
        "",
        episodes_table(metrics),
        "",
        "## Heads",
        "",
    ]
    lines += [f"- **{h}**: {d}" for h, d in HEAD_DESCRIPTIONS.items()]
    released = [
        (t, s, m, h, r)
        for t, per in metrics.items()
        for s, pm in per.items()
        for m, ph in pm.items()
        for h, r in ph.items()
        if "released_ci95" in r
    ]
    if released:
        lines += ["", "## The authors' interval (1.96·std of the run means)", ""]
        lines += [
            f"- {t} {s} {m} / {h}: {r['mean']:.2f} ± {r['released_ci95']:.2f} over {r['runs']} runs"
            for t, s, m, h, r in released
        ]
    lines += ["", "## What was selected on what", ""]
    lines += [f"- **{k}**: {v}" for k, v in (selection or {"nothing": "no selection on data"}).items()]
    if hashes:
        lines += ["", "## Data", "", "| set | hash |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in hashes.items()]
    lines += ["", "## Settings", ""] + [f"- **{k}**: {v}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def write_episode_results(
    out,
    metrics: dict,
    *,
    title: str,
    settings: dict,
    selection: dict | None = None,
    hashes: dict | None = None,
    extra: dict | None = None,
) -> None:
    """``out/metrics.json`` (through :func:`fdalign.eval.write_metrics`) and ``out/report.md``."""
    from pathlib import Path

    from fdalign.eval.report import write_metrics
    from fdalign.io import atomic_write_text

    write_metrics(
        out,
        metrics,
        {
            "kind": "episodes",
            "settings": settings,
            "selection": selection or {},
            "hashes": hashes or {},
            "heads": HEAD_DESCRIPTIONS,
            **(extra or {}),
        },
    )
    atomic_write_text(
        Path(out) / "report.md",
        render_episode_report(metrics, title=title, settings=settings, selection=selection, hashes=hashes),
    )


__all__ = [
    "EpisodeEvalSettings",
    "EpisodeTarget",
    "HEAD_DESCRIPTIONS",
    "Z95",
    "episode_accuracy",
    "episodes_table",
    "evaluate_episodes",
    "mean_ci",
    "plan_episodes",
    "reindex",
    "released_interval",
    "render_episode_report",
    "summarize",
    "used_samples",
    "write_episode_results",
]
