"""APE and APE-T (Zhu et al., ICCV 2023, "Not All Features Matter"), on features from any encoder.

**Prior refinement.** Not every feature channel helps to tell the classes apart. For channel ``k``:

* inter-class similarity ``S_k = mean_{i != j} m_ik m_jk``, where ``m_c`` is the mean of class
  ``c``'s normalised features: its text prototype and its cached K-shot image features;
* variance ``V_k = var_c W_ck`` of the text classifier over the classes.

Channels with a high ``J_k = lam * V_k - (1 - lam) * S_k`` are kept (the ``Q`` best). Below, a prime
marks features restricted to those channels and renormalised.

**Logits** from three affinities: test image-text (zero-shot, all channels), test image-cache images
(in the refined channels) and cache image-text (the refined zero-shot prediction of each cached
image, which weights that image's vote)::

    logits = s f W^T + alpha * (exp(-beta (1 - f' K'^T)) * r) L,   r_j = exp(-gamma KL(L_j || P_j))

with ``P = softmax(s K' W'^T)`` ``[N, C]``, so ``r_j = P_j[y_j] ** gamma``: cached images whose label
CLIP already agrees with vote with weight near 1, confusing ones less; ``gamma = 0`` gives plain
cache votes on the refined channels. (This form of the cache-text weight is our reading of the
paper; it is bounded in (0, 1].)

**APE-T** trains a category residual ``R`` ``[C, Q]`` (zero at the start), added to the refined
text prototypes, to the same channels of the full text classifier and to every cache key of the
class, for a few epochs; with zero epochs it is APE. ``Q``, ``alpha``, ``beta`` and ``gamma`` are
searched on the validation split only (:func:`fit_ape`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fdalign.heads.cache import (
    DEFAULT_CHUNK, FitConfig, GridSpec, Memo, affinity, class_sums, fit_and_select_epoch, grid_values,
    in_chunks, normalize, search, top1,
)
from fdalign.selection import EvalSplit, SelectionLog


def channel_criterion(prototypes: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor, lam: float) -> torch.Tensor:
    """APE's refinement score ``J`` ``[D]`` from prototypes ``[C, D]``, keys ``[N, D]`` and labels ``[N]``."""
    w, k = normalize(prototypes), normalize(keys)
    c = w.shape[0]
    counts = torch.bincount(labels, minlength=c).to(w.dtype) + 1.0
    means = (w + torch.zeros_like(w).index_add(0, labels, k)) / counts[:, None]  # [C, D]
    # sum over ordered pairs i != j of m_i m_j = (sum_i m_i)^2 - sum_i m_i^2
    pairs = means.sum(0) ** 2 - (means**2).sum(0)
    similarity = pairs / (c * (c - 1)) if c > 1 else torch.zeros_like(pairs)
    variance = w.var(0, unbiased=False)
    return lam * variance - (1.0 - lam) * similarity


def select_channels(prototypes, keys, labels, q: int, lam: float = 0.5) -> torch.Tensor:
    """Indices ``[q]`` (ascending) of the ``q`` channels with the highest criterion; ties to the lower index."""
    d = prototypes.shape[1]
    if not 1 <= q <= d:
        raise ValueError(f"q must lie in [1, {d}], got {q}")
    order = torch.argsort(-channel_criterion(prototypes, keys, labels, lam), stable=True)
    return order[:q].sort().values


def num_channels(spec: float, dim: int) -> int:
    """A channel count from the grid: a fraction of ``dim`` when <= 1, else a count (clipped to ``dim``)."""
    q = round(spec * dim) if spec <= 1 else int(spec)
    return max(1, min(dim, q))


class APEHead(nn.Module):
    """APE's logits (module docstring); ``trainable=True`` makes the category residual a parameter (APE-T).

    Args:
        prototypes ``[C, D]``, scale, keys ``[N, D]``, labels ``[N]``: as for Tip-Adapter.
        channels: ``[Q]`` indices kept by :func:`select_channels`.
        alpha, beta, gamma: cache weight, affinity sharpness, cache-text weight exponent.
    """

    def __init__(self, prototypes, scale, keys, labels, channels, alpha: float, beta: float, gamma: float,
                 trainable: bool = False, chunk: int = DEFAULT_CHUNK):
        super().__init__()
        self.register_buffer("prototypes", normalize(prototypes.detach()))
        self.register_buffer("keys", normalize(keys.detach()))
        self.register_buffer("labels", labels.detach().long().clone())
        self.register_buffer("channels", channels.detach().long().clone())
        residual = torch.zeros(self.prototypes.shape[0], len(channels), device=self.prototypes.device)
        if trainable:
            self.residual = nn.Parameter(residual)
        else:
            self.register_buffer("residual", residual)
        self.scale, self.alpha, self.beta, self.gamma = float(scale), float(alpha), float(beta), float(gamma)
        self.chunk = int(chunk)

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def refined(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(full text classifier ``[C, D]``, refined text ``[C, Q]``, refined keys ``[N, Q]``), residual added."""
        full = normalize(self.prototypes.index_add(1, self.channels, self.residual))
        text = normalize(self.prototypes[:, self.channels] + self.residual)
        keys = normalize(self.keys[:, self.channels] + self.residual[self.labels])
        return full, text, keys

    def key_weights(self, text: torch.Tensor, keys: torch.Tensor, gamma: float | None = None) -> torch.Tensor:
        """``r`` ``[N]``: ``exp(-gamma KL(one_hot || softmax(s K' W'^T)))`` = ``P[y] ** gamma``."""
        gamma = self.gamma if gamma is None else gamma
        log_p = torch.log_softmax(self.scale * keys @ text.t(), dim=-1)
        return torch.exp(gamma * log_p.gather(1, self.labels[:, None]).squeeze(1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw features -> ``[B, C]`` logits, ``chunk`` rows at a time."""
        full, text, keys = self.refined()
        weights = self.key_weights(text, keys)

        def logits(x):
            f = normalize(x)
            f_ref = normalize(f[:, self.channels])
            votes = affinity(f_ref, keys, self.beta) * weights
            return self.scale * f @ full.t() + self.alpha * class_sums(votes, self.labels, self.num_classes)

        return in_chunks(logits, features, self.chunk)

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, cache={self.keys.shape[0]}, channels={len(self.channels)}, "
                f"alpha={self.alpha:g}, beta={self.beta:g}, gamma={self.gamma:g}")


@dataclass
class APEConfig:
    """Search grids ('lo:hi:n', 'a,b,c' or lists), the refinement weight ``lam`` and APE-T training.

    ``channels``: Q as fractions of D (<= 1) or counts. alpha/beta span the Tip-Adapter ranges.
    """

    channels: GridSpec = "0.5,0.7,0.9"
    alpha: GridSpec = "0.1:3:10"
    beta: GridSpec = "0.1:7:20"
    gamma: GridSpec = "0,0.5,1,2"
    lam: float = 0.5
    fit: FitConfig = field(default_factory=FitConfig)


def _search(head_for_q, val: EvalSplit, cfg: APEConfig, qs, log, what: str, progress: bool = False) -> APEHead:
    """Grid search over (Q, beta, gamma, alpha) in that order; ``head_for_q(q)`` builds the head of a Q."""
    alphas, betas = grid_values(cfg.alpha, "ape.alpha"), grid_values(cfg.beta, "ape.beta")
    gammas = grid_values(cfg.gamma, "ape.gamma")
    memo = Memo()

    @torch.no_grad()
    def score(c, feats, labels):
        q, beta, gamma, alpha = c
        head = memo.get("head", q, lambda: head_for_q(q))

        def base():
            full, text, keys = head.refined()
            f = normalize(feats.to(head.prototypes.device))
            return head.scale * f @ full.t(), normalize(f[:, head.channels]) @ keys.t(), text, keys

        zero_shot, cos, text, keys = memo.get("base", q, base)
        aff = memo.get("beta", (q, beta), lambda: torch.exp(-beta * (1 - cos)))

        votes = memo.get("gamma", (q, beta, gamma),
                         lambda: class_sums(aff * head.key_weights(text, keys, gamma), head.labels, head.num_classes))
        return top1(zero_shot + alpha * votes, labels)

    grid = [(q, b, g, a) for q in qs for b in betas for g in gammas for a in alphas]
    q, beta, gamma, alpha = search(what, grid, score, val, log, progress)
    head = memo.get("head", q, lambda: head_for_q(q))
    head.alpha, head.beta, head.gamma = float(alpha), float(beta), float(gamma)
    return head


def fit_ape(prototypes, scale, keys, labels, val: EvalSplit, cfg: APEConfig | None = None,
            log: SelectionLog | None = None, name: str = "APE", chunk: int = DEFAULT_CHUNK,
            progress: bool = False) -> APEHead:
    """APE with Q, alpha, beta, gamma searched on ``val`` (an :class:`EvalSplit` of features, role val)."""
    cfg = cfg or APEConfig()
    dim = prototypes.shape[1]
    qs = list(dict.fromkeys(num_channels(s, dim) for s in grid_values(cfg.channels, "ape.channels")))

    def head_for_q(q):
        idx = select_channels(prototypes, keys, labels, q, cfg.lam)
        return APEHead(prototypes, scale, keys, labels, idx, 1.0, 1.0, 0.0, chunk=chunk).to(prototypes.device)

    return _search(head_for_q, val, cfg, qs, log, f"{name}: Q, beta, gamma, alpha", progress)


def fit_ape_t(ape: APEHead, train_features, train_labels, val: EvalSplit, cfg: APEConfig | None = None,
              log: SelectionLog | None = None, name: str = "APE-T", progress: bool = False) -> APEHead:
    """APE-T from a fitted APE: train the category residual (Q and channels kept), keep the best val
    epoch, re-search alpha/beta/gamma. Zero epochs give back APE's logits."""
    cfg = cfg or APEConfig()
    head = APEHead(ape.prototypes, ape.scale, ape.keys, ape.labels, ape.channels, ape.alpha, ape.beta, ape.gamma,
                   trainable=True, chunk=ape.chunk).to(ape.prototypes.device)
    fit_and_select_epoch(f"{name}: epoch", head, [head.residual], train_features, train_labels, val, cfg.fit, log,
                         progress)
    head.residual.requires_grad_(False)
    return _search(lambda q: head, val, cfg, [len(head.channels)], log, f"{name}: Q, beta, gamma, alpha",
                   progress)


__all__ = ["APEConfig", "APEHead", "channel_criterion", "fit_ape", "fit_ape_t", "num_channels", "select_channels"]
