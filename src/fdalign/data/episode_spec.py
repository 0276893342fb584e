"""What sets an N-way K-shot episode protocol: its shape (:class:`EpisodeSpec`), what to do with classes
too small for it, the heads that score it and the flags each command spells N, K, Q with.

Kept free of torch so that the command line builds its options (``fdalign --help``) without loading it;
the sampling is in :mod:`fdalign.data.episodes`, the heads in :mod:`fdalign.heads.episodes`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fdalign.errors import FDAlignError

ON_SMALL = ("skip", "error")  # a class with fewer than K + Q images: left out (counted) or an error
EPISODE_HEADS = ("proto", "text", "combined")
PROTO_SCALE_INIT = 10.0  # the ProtoNet head's initial logit scale
# The options that set N, K and Q, as each command spells them: the advice names the caller's flags.
EVAL_FLAGS = {"ways": "--ways", "shots": "--shots", "queries": "--queries"}
TRAIN_FLAGS = {"ways": "--n-way", "shots": "--k-shot", "queries": "--q-query"}


@dataclass(frozen=True)
class EpisodeSpec:
    """``n_way`` classes, ``k_shot`` support and ``q_query`` query images per class."""

    n_way: int = 5
    k_shot: int = 1
    q_query: int = 15

    def __post_init__(self):
        for f in ("n_way", "k_shot", "q_query"):
            if getattr(self, f) < 1:
                raise FDAlignError(f"{f.replace('_', '-')} must be >= 1 (got {getattr(self, f)})")
        if self.n_way < 2:
            raise FDAlignError(f"an episode needs at least 2 ways (got {self.n_way})")

    @property
    def per_class(self) -> int:
        return self.k_shot + self.q_query

    @property
    def name(self) -> str:
        return f"{self.n_way}-way {self.k_shot}-shot"


__all__ = ["EPISODE_HEADS", "EVAL_FLAGS", "ON_SMALL", "PROTO_SCALE_INIT", "TRAIN_FLAGS", "EpisodeSpec"]
