"""Spurious Prototype Correction (SPC).

Some prompt templates are odd ones out (e.g. "a {} in a video game." next to 79 kinds of photo), and
many are near duplicates. SPC therefore (1) scores the ``M`` spurious prototypes with an
IsolationForest and keeps the ``keep`` most normal ones, then (2) clusters the survivors with KMeans
into ``k`` centres, so the spurious distribution is over ``k`` distinct, typical "styles" instead of
``M`` redundant and noisy ones.

Differences from the authors' released code (see REFERENCE.md): they do not seed the
IsolationForest (so their kept set varies from run to run) and they do not renormalise the KMeans
centres. We seed everything and renormalise by default; ``renormalize=False`` returns raw centres.
Both steps are invariant to a global rescaling of the inputs, so the authors' x100 does not matter.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fdalign.errors import FDAlignError


@dataclass
class SPCConfig:
    """Settings of Spurious Prototype Correction.

    Attributes:
        keep: number of templates the IsolationForest keeps (the most normal ones).
        k: number of KMeans centres, i.e. corrected spurious prototypes.
        seed: ``random_state`` of both the IsolationForest and KMeans.
        renormalize: L2-normalise the KMeans centres (the released code does not).
    """

    keep: int = 60
    k: int = 20
    seed: int = 0
    renormalize: bool = True

    def __post_init__(self):
        if self.keep < 1:
            raise FDAlignError(
                f"SPC keep must be >= 1 (got {self.keep}); it is how many templates survive outlier removal"
            )
        if self.k < 1:
            raise FDAlignError(f"SPC k must be >= 1 (got {self.k}); it is how many corrected prototypes KMeans makes")


@dataclass
class SPCResult:
    """Output of :func:`correct_spurious_prototypes`.

    Attributes:
        prototypes: ``[k, D]`` float32 corrected spurious prototypes (``[keep, D]`` if too few to cluster).
        kept: indices of the templates that survived outlier removal, ascending.
        dropped: indices of the templates removed as outliers, ascending.
    """

    prototypes: torch.Tensor
    kept: list[int]
    dropped: list[int]


def correct_spurious_prototypes(spurious: torch.Tensor, cfg: SPCConfig | None = None) -> SPCResult:
    """Drop outlier templates and cluster the rest.

    Args:
        spurious: ``[M, D]`` spurious prototypes (one per template).
        cfg: settings; defaults to ``SPCConfig()`` (keep 60, k 20, seed 0).

    Returns:
        :class:`SPCResult` with ``[k, D]`` prototypes. Deterministic for a given ``cfg.seed``.
    """
    from sklearn.cluster import KMeans
    from sklearn.ensemble import IsolationForest

    cfg = cfg or SPCConfig()
    if spurious.ndim != 2:
        raise ValueError(f"spurious prototypes must be [M, D], got shape {tuple(spurious.shape)}")
    x = spurious.detach().to("cpu", torch.float64).numpy()
    m = x.shape[0]

    if cfg.keep >= m:
        kept = np.arange(m)
    else:
        forest = IsolationForest(random_state=cfg.seed).fit(x)
        scores = forest.score_samples(x)  # higher = more normal
        # stable sort so ties resolve by template order, not by platform quirks
        kept = np.sort(np.argsort(-scores, kind="stable")[: cfg.keep])
    dropped = np.setdiff1d(np.arange(m), kept)

    if cfg.k >= len(kept):
        warnings.warn(
            f"SPC k={cfg.k} >= {len(kept)} kept templates: nothing to cluster, using the kept "
            f"spurious prototypes as they are; lower k (or raise keep) to get real clustering",
            stacklevel=2,
        )
        protos = spurious.detach().to("cpu", torch.float32)[torch.from_numpy(kept)].clone()
    else:
        km = KMeans(n_clusters=cfg.k, random_state=cfg.seed, n_init=10).fit(x[kept])
        protos = torch.from_numpy(km.cluster_centers_).float()
        if cfg.renormalize:
            protos = F.normalize(protos, dim=-1)
    return SPCResult(prototypes=protos, kept=kept.tolist(), dropped=dropped.tolist())
