"""``--heads-preset authors``: the Tip-Adapter and APE authors' published settings, per data set.

The values are those of ``shared/REFERENCE.md`` (the authors' configs): search scales, initial alpha,
APE's channel counts (given for 1024-d RN50 features, used here as fractions of D), criterion
weights and APE-T's optimiser. Everything is still *chosen* on val: only the grids come from here.
"""

from __future__ import annotations

from fdalign.heads.ape import APEConfig
from fdalign.heads.cache import FitConfig
from fdalign.heads.tip import TipConfig

PRESETS = ("authors",)
AUTHORS_LOGIT_SCALE = 100.0  # both codes use the constant 100, not the model's learnt scale
AUTHORS_VIEWS = 10  # cache keys: the mean of 10 random-crop + flip views of every shot

# data set -> (s_beta, s_alpha, init alpha)
TIP: dict[str, tuple[float, float, float]] = {
    "imagenet": (7, 3, 1.17),
    "caltech101": (12, 5, 3),
    "dtd": (13, 13, 2),
    "eurosat": (12, 10, 2),
    "aircraft": (30, 30, 5),
    "food101": (10, 10, 1.17),
    "flowers102": (50, 50, 10),
    "oxfordpets": (7, 3, 1.17),
    "stanfordcars": (20, 10, 3),
    "sun397": (12, 10, 1.17),
    "ucf101": (7, 3, 3),
}
# data set -> (s_beta, s_alpha, s_gamma, n_gamma, init alpha, Q free, Q trained (of 1024),
#              (w_sim, w_var) training-free, APE-T lr, eps, epochs)
APE: dict[str, tuple] = {
    "imagenet": (7, 7, 0.5, 5, 2, 500, 500, (0.7, 0.3), 1e-4, 1e-3, 20),
    "caltech101": (7, 7, 1, 20, 1, 800, 900, (0.5, 0.5), 1e-3, 1e-3, 30),
    "dtd": (7, 7, 1, 20, 3, 400, 700, (0.5, 0.5), 1e-3, 1e-3, 20),
    "eurosat": (30, 5, 1.5, 20, 1, 700, 900, (0.9, 0.1), 1e-3, 1e-3, 200),
    "aircraft": (20, 10, 1, 20, 5, 800, 900, (0.1, 0.9), 1e-3, 1e-3, 30),
    "food101": (7, 7, 1, 20, 0.8, 700, 900, (0.3, 0.7), 1e-4, 1e-3, 30),
    "flowers102": (7, 7, 1, 20, 3, 700, 800, (0.4, 0.6), 1e-3, 1e-3, 60),
    "oxfordpets": (7, 7, 1, 20, 2, 800, 800, (0.7, 0.3), 1e-4, 2e-3, 30),
    "stanfordcars": (10, 7, 1, 20, 1, 500, 800, (0.6, 0.4), 1e-3, 5e-3, 30),
    "sun397": (10, 7, 1, 20, 1, 800, 800, (0.7, 0.3), 1e-4, 1e-3, 30),
    "ucf101": (10, 7, 1.5, 20, 2, 700, 800, (0.3, 0.7), 1e-3, 2e-3, 30),
}


def dataset_key(name: str | None) -> str | None:
    """A data set's key in the tables above (aliases as in the released LR table), or None if unknown."""
    from fdalign.data.names import dataset_key as _dataset_key

    key = _dataset_key(name) if name else None
    return key if key in TIP else None


def authors_tip(key: str | None) -> TipConfig:
    """Tip / Tip-F: the data set's grids and init alpha (ImageNet's for an unknown set); Tip-F trains
    from (beta 1, init alpha), 20 epochs (EuroSAT 100), AdamW lr 1e-3, eps 1e-4, batch 256."""
    s_beta, s_alpha, init_alpha = TIP.get(key, TIP["imagenet"])
    fit = FitConfig(epochs=100 if key == "eurosat" else 20, lr=1e-3, eps=1e-4, weight_decay=0.01, batch_size=256)
    return TipConfig(
        alpha=f"0.1:{s_alpha}:20:open",
        beta=f"0.1:{s_beta}:200:open",
        init_alpha=float(init_alpha),
        init_beta=1.0,
        fit=fit,
    )


def authors_ape(key: str | None) -> APEConfig:
    """APE / APE-T: the data set's row, or the defaults of :class:`APEConfig` (their common grid)."""
    if key not in APE:
        return APEConfig()
    s_beta, s_alpha, s_gamma, n_gamma, init_alpha, q_free, q_t, w, lr, eps, epochs = APE[key]
    return APEConfig(
        channels=str(q_free / 1024),
        weights=w,
        alpha=f"0.1:{s_alpha}:20:open",
        beta=f"0.1:{s_beta}:200:open",
        gamma=f"0:{s_gamma}:{n_gamma}:open",
        t_channels=q_t / 1024,
        t_weights=(0.2, 0.8),
        init_alpha=float(init_alpha),
        init_beta=1.0,
        fit=FitConfig(epochs=epochs, lr=lr, eps=eps, weight_decay=0.1, batch_size=256),
    )


__all__ = ["APE", "AUTHORS_LOGIT_SCALE", "AUTHORS_VIEWS", "PRESETS", "TIP", "authors_ape", "authors_tip", "dataset_key"]
