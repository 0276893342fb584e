"""APE and APE-T (Zhu et al., ICCV 2023, "Not All Features Matter"), as their authors define them.

Notation: text classifier ``W`` ``[C, D]`` (normalised class prototypes), cache keys ``K`` ``[N, D]``
(normalised K-shot features), one-hot values ``L`` ``[N, C]``, a test feature ``f`` (normalised).

**Channel selection.** ``criterion_d = -w_sim * sim_d + w_var * var_d`` where ``sim_d`` is the mean,
over pairs of different classes, of the product of their features in channel ``d`` (each class's
features: its text prototype and its K cached images, so the pair mean is ``m_i,d * m_j,d`` of the
class means) and ``var_d`` the sample (unbiased) variance of ``W[:, d]`` over the classes. The ``Q``
highest are kept; a prime marks features restricted to them and renormalised.

**APE** (training-free)::

    D_i    = sum_c L_ic log2((L_ic + 1e-6) / (softmax_c(K'_i W'^T) + 1e-6))   # bits, no logit scale
    R_i    = exp(gamma * D_i)                                                  # >= 1
    logits = s f W^T + alpha * exp(-beta (1 - f' K'^T)) (R * L)

``D_i`` is the KL of cached image ``i``'s one-hot label from the text classifier's softmax on the
selected channels, so the cached images the text classifier gets wrong vote loudest.

**APE-T** adds a trainable category residual ``P`` ``[C, Q_t]`` (zero at the start) to the ``Q_t``
selected channels of the *full-dimension* keys (``P[y_i]`` to key ``i``) and of ``W``, without
renormalising, and a trainable value weight ``v`` ``[N]`` (one at the start) on ``L``::

    logits = s f W~^T + alpha * exp(-beta (1 - f K~^T)) (v * L)

The affinity uses all ``D`` channels, so at initialisation APE-T is Tip-Adapter. Everything chosen
(``Q`` if given a grid, ``alpha``, ``beta``, ``gamma``, APE-T's epoch) is chosen on val only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fdalign.heads.cache import (
    DEFAULT_CHUNK,
    FitConfig,
    GridSpec,
    Memo,
    affinity,
    class_sums,
    fit_and_select_epoch,
    grid_values,
    in_chunks,
    normalize,
    search,
    top1,
)
from fdalign.selection import EvalSplit, SelectionLog

Weights = tuple[float, float]  # (w_sim, w_var) of the channel criterion


def channel_criterion(
    prototypes: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, weights: Weights = (0.5, 0.5)
) -> torch.Tensor:
    """``-w_sim * sim + w_var * var`` ``[D]`` from prototypes ``[C, D]``, keys ``[N, D]``, labels ``[N]``."""
    w, k = normalize(prototypes), normalize(keys)
    c = w.shape[0]
    counts = torch.bincount(labels, minlength=c).to(w.dtype) + 1.0
    means = (w + torch.zeros_like(w).index_add(0, labels, k)) / counts[:, None]  # [C, D]: text + shots
    # sum over ordered pairs i != j of m_i m_j = (sum_i m_i)^2 - sum_i m_i^2
    pairs = means.sum(0) ** 2 - (means**2).sum(0)
    similarity = pairs / (c * (c - 1)) if c > 1 else torch.zeros_like(pairs)
    variance = w.var(0, unbiased=True) if c > 1 else torch.zeros_like(pairs)
    return -weights[0] * similarity + weights[1] * variance


def select_channels(prototypes, keys, labels, q: int, weights: Weights = (0.5, 0.5)) -> torch.Tensor:
    """Indices ``[q]`` (ascending) of the ``q`` channels with the highest criterion; ties to the lower index."""
    d = prototypes.shape[1]
    if not 1 <= q <= d:
        raise ValueError(f"q must lie in [1, {d}], got {q}")
    order = torch.argsort(-channel_criterion(prototypes, keys, labels, weights), stable=True)
    return order[:q].sort().values


def num_channels(spec: float, dim: int) -> int:
    """A channel count from the grid: a fraction of ``dim`` when <= 1, else a count (clipped to ``dim``)."""
    q = round(spec * dim) if spec <= 1 else int(spec)
    return max(1, min(dim, q))


def cache_text_divergence(keys: torch.Tensor, text: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``D`` ``[N]`` in bits: KL of each key's one-hot label from ``softmax(keys @ text^T)`` (unscaled).

    ``keys`` ``[N, Q]``, ``text`` ``[C, Q]`` (the selected channels, renormalised), ``labels`` ``[N]``.
    """
    p = torch.softmax(keys @ text.t(), dim=-1)
    one_hot = torch.nn.functional.one_hot(labels, text.shape[0]).to(p.dtype)
    return (one_hot * torch.log2((one_hot + 1e-6) / (p + 1e-6))).sum(1)


class APEHead(nn.Module):
    """Training-free APE (module docstring).

    Args:
        prototypes ``[C, D]``, scale, keys ``[N, D]``, labels ``[N]``: as for Tip-Adapter.
        channels: ``[Q]`` indices kept by :func:`select_channels`.
        alpha, beta, gamma: cache weight, affinity sharpness, exponent of the cache-text weight.
    """

    def __init__(
        self,
        prototypes,
        scale,
        keys,
        labels,
        channels,
        alpha: float,
        beta: float,
        gamma: float,
        chunk: int = DEFAULT_CHUNK,
    ):
        super().__init__()
        self.register_buffer("prototypes", normalize(prototypes.detach()))
        self.register_buffer("labels", labels.detach().long().clone())
        self.register_buffer("channels", channels.detach().long().clone())
        self.register_buffer("keys", normalize(keys.detach()[:, self.channels]))  # K' [N, Q]
        text = normalize(self.prototypes[:, self.channels])  # W' [C, Q]
        self.register_buffer("divergence", cache_text_divergence(self.keys, text, self.labels))
        self.scale, self.alpha, self.beta, self.gamma = float(scale), float(alpha), float(beta), float(gamma)
        self.chunk = int(chunk)

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def key_weights(self, gamma: float | None = None) -> torch.Tensor:
        """``R`` ``[N]`` = ``exp(gamma * D)`` (>= 1)."""
        return torch.exp((self.gamma if gamma is None else gamma) * self.divergence)

    def zero_shot_and_cosines(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, D]`` raw features -> (``s f W^T`` ``[B, C]``, ``f' K'^T`` ``[B, N]``)."""
        f = normalize(features)
        return self.scale * f @ self.prototypes.t(), normalize(f[:, self.channels]) @ self.keys.t()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw features -> ``[B, C]`` logits, ``chunk`` rows at a time."""
        weights = self.key_weights()

        def logits(x):
            zero_shot, cos = self.zero_shot_and_cosines(x)
            votes = torch.exp(-self.beta * (1.0 - cos)) * weights
            return zero_shot + self.alpha * class_sums(votes, self.labels, self.num_classes)

        return in_chunks(logits, features, self.chunk)

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, cache={self.keys.shape[0]}, channels={len(self.channels)}, "
            f"alpha={self.alpha:g}, beta={self.beta:g}, gamma={self.gamma:g}"
        )


class APETHead(nn.Module):
    """APE-T (module docstring): trainable ``residual`` ``[C, Q_t]`` and ``values`` ``[N]``.

    Args:
        prototypes ``[C, D]``, scale, keys ``[N, D]``, labels ``[N]``: as for Tip-Adapter.
        channels: ``[Q_t]`` indices the residual is added to.
        alpha, beta: as Tip-Adapter's.
    """

    def __init__(
        self, prototypes, scale, keys, labels, channels, alpha: float, beta: float, chunk: int = DEFAULT_CHUNK
    ):
        super().__init__()
        self.register_buffer("prototypes", normalize(prototypes.detach()))
        self.register_buffer("keys", normalize(keys.detach()))
        self.register_buffer("labels", labels.detach().long().clone())
        self.register_buffer("channels", channels.detach().long().clone())
        dev = self.prototypes.device
        self.residual = nn.Parameter(torch.zeros(self.prototypes.shape[0], len(channels), device=dev))
        self.values = nn.Parameter(torch.ones(self.keys.shape[0], device=dev))
        self.scale, self.alpha, self.beta, self.chunk = float(scale), float(alpha), float(beta), int(chunk)

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def adapted(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(``W~`` ``[C, D]``, ``K~`` ``[N, D]``): the residual added on the selected channels, not renormalised."""
        text = self.prototypes.index_add(1, self.channels, self.residual)
        keys = self.keys.index_add(1, self.channels, self.residual[self.labels])
        return text, keys

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw features -> ``[B, C]`` logits, ``chunk`` rows at a time."""
        text, keys = self.adapted()

        def logits(x):
            f = normalize(x)
            votes = affinity(f, keys, self.beta) * self.values
            return self.scale * f @ text.t() + self.alpha * class_sums(votes, self.labels, self.num_classes)

        return in_chunks(logits, features, self.chunk)

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, cache={self.keys.shape[0]}, channels={len(self.channels)}, "
            f"alpha={self.alpha:g}, beta={self.beta:g}"
        )


@dataclass
class APEConfig:
    """The authors' settings ('lo:hi:n[:open]', 'a,b,c' or lists); defaults: their common grid.

    ``channels``: APE's Q as fractions of D (<= 1) or counts (several are searched on val);
    ``weights``: (w_sim, w_var) of the channel criterion. ``t_channels`` / ``t_weights``: APE-T's.
    APE-T starts from (``init_beta``, ``init_alpha``) and searches (beta, alpha) after training.
    """

    channels: GridSpec = "0.5"
    weights: Weights = (0.5, 0.5)
    alpha: GridSpec = "0.1:7:20:open"
    beta: GridSpec = "0.1:7:200:open"
    gamma: GridSpec = "0:1:20:open"
    t_channels: float = 0.8
    t_weights: Weights = (0.2, 0.8)
    init_alpha: float = 1.0
    init_beta: float = 1.0
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=20, lr=1e-3, eps=1e-3, weight_decay=0.1))


def fit_ape(
    prototypes,
    scale,
    keys,
    labels,
    val: EvalSplit,
    cfg: APEConfig | None = None,
    log: SelectionLog | None = None,
    name: str = "APE",
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> APEHead:
    """APE with (Q,) beta, gamma, alpha searched on ``val`` (an :class:`EvalSplit` of features, role val)."""
    cfg = cfg or APEConfig()
    dim = prototypes.shape[1]
    qs = list(dict.fromkeys(num_channels(s, dim) for s in grid_values(cfg.channels, "ape.channels")))
    alphas, betas = grid_values(cfg.alpha, "ape.alpha"), grid_values(cfg.beta, "ape.beta")
    gammas = grid_values(cfg.gamma, "ape.gamma")
    memo = Memo()

    def head_for_q(q):
        idx = select_channels(prototypes, keys, labels, q, tuple(cfg.weights))
        return APEHead(prototypes, scale, keys, labels, idx, 1.0, 1.0, 0.0, chunk=chunk).to(prototypes.device)

    @torch.no_grad()
    def score(c, feats, y):
        q, beta, gamma, alpha = c
        head = memo.get("head", q, lambda: head_for_q(q))
        zero_shot, cos = memo.get("base", q, lambda: head.zero_shot_and_cosines(feats.to(prototypes.device)))
        aff = memo.get("beta", (q, beta), lambda: torch.exp(-beta * (1 - cos)))
        votes = memo.get(
            "gamma", (q, beta, gamma), lambda: class_sums(aff * head.key_weights(gamma), head.labels, head.num_classes)
        )
        return top1(zero_shot + alpha * votes, y)

    grid = [(q, b, g, a) for q in qs for b in betas for g in gammas for a in alphas]
    q, beta, gamma, alpha = search(f"{name}: Q, beta, gamma, alpha", grid, score, val, log, progress)
    head = memo.get("head", q, lambda: head_for_q(q))
    head.alpha, head.beta, head.gamma = float(alpha), float(beta), float(gamma)
    return head


def search_ape_t(
    head: APETHead, val: EvalSplit, cfg: APEConfig, log: SelectionLog | None, what: str, progress: bool = False
) -> APETHead:
    """Set ``head.alpha``/``head.beta`` to the best val grid point (beta-major), residual and values fixed."""
    alphas, betas = grid_values(cfg.alpha, "ape.alpha"), grid_values(cfg.beta, "ape.beta")
    memo = Memo()

    @torch.no_grad()
    def score(c, feats, y):
        beta, alpha = c

        def base():
            text, keys = head.adapted()
            f = normalize(feats.to(head.prototypes.device))
            return head.scale * f @ text.t(), f @ keys.t()

        zero_shot, cos = memo.get("base", id(feats), base)
        votes = memo.get(
            "beta", beta, lambda: class_sums(torch.exp(-beta * (1 - cos)) * head.values, head.labels, head.num_classes)
        )
        return top1(zero_shot + alpha * votes, y)

    beta, alpha = search(what, [(b, a) for b in betas for a in alphas], score, val, log, progress)
    head.alpha, head.beta = float(alpha), float(beta)
    return head


def fit_ape_t(
    prototypes,
    scale,
    keys,
    labels,
    train_features,
    val: EvalSplit,
    cfg: APEConfig | None = None,
    log: SelectionLog | None = None,
    name: str = "APE-T",
    chunk: int = DEFAULT_CHUNK,
    progress: bool = False,
) -> APETHead:
    """APE-T: select ``t_channels`` with ``t_weights``, train the residual and value weights from
    (``init_beta``, ``init_alpha``) with AdamW (``cfg.fit``), keep the best val epoch, then search
    (beta, alpha) on val. ``train_features``: ``[N, D]`` or ``[V, N, D]`` views, one per epoch
    (:func:`fdalign.heads.cache.fit_and_select_epoch`). Zero epochs give Tip-Adapter at the searched point.
    """
    cfg = cfg or APEConfig()
    q = num_channels(cfg.t_channels, prototypes.shape[1])
    idx = select_channels(prototypes, keys, labels, q, tuple(cfg.t_weights))
    head = APETHead(prototypes, scale, keys, labels, idx, cfg.init_alpha, cfg.init_beta, chunk).to(prototypes.device)
    fit_and_select_epoch(
        f"{name}: epoch", head, [head.residual, head.values], train_features, labels, val, cfg.fit, log, progress
    )
    head.requires_grad_(False)
    return search_ape_t(head, val, cfg, log, f"{name}: beta, alpha", progress)


__all__ = [
    "APEConfig",
    "APEHead",
    "APETHead",
    "cache_text_divergence",
    "channel_criterion",
    "fit_ape",
    "fit_ape_t",
    "num_channels",
    "search_ape_t",
    "select_channels",
]
