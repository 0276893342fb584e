"""FD-Align's losses as pure functions.

``L = alpha * CE(logits, y) + beta * KL(P_spur(x; f_t), P_spur(x; f_0))`` where
``P_spur(x; f) = softmax_k(scale * cos(f(x), mu_spur[k]))`` is the distribution of an image's
feature over the (corrected) spurious prototypes, ``f_t`` the encoder being fine-tuned and ``f_0``
its frozen copy. The KL term keeps the fine-tuned features' relation to "styles" (templates without
the class) as it was, which is what preserves out-of-distribution robustness.

All functions take raw (unnormalised) features and normalise them themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fdalign.errors import FDAlignError

# "paper": KL(P_t || P_0) summed over prototypes and averaged over the batch, as written in the paper.
# "released": torch.nn.KLDivLoss()(log P_t, P_0) as in the authors' code, i.e. KL(P_0 || P_t) summed
#   and divided by B*K (reduction 'mean'), which is K times smaller and has the arguments swapped.
KL_DIRECTIONS = ("paper", "released")


def cosine_logits(
    features: torch.Tensor, prototypes: torch.Tensor, scale: float, normalize_prototypes: bool = True
) -> torch.Tensor:
    """Scaled cosine similarity.

    Args:
        features: ``[B, D]`` raw features (normalised here).
        prototypes: ``[K, D]`` prototypes (normalised here unless ``normalize_prototypes=False``,
            which reproduces the released code's use of unnormalised KMeans centres).
        scale: temperature multiplier, e.g. CLIP's ``logit_scale`` (100).

    Returns:
        ``[B, K]`` logits ``scale * <f/|f|, p/|p|>``, in at least float32: bf16 / fp16 features (f0 in bf16)
        are cast up before the product, whose rounding at scale 100 would rival a small KL.
    """
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    with torch.autocast(features.device.type, enabled=False):  # autocast would run the product in bf16 again
        f = F.normalize(features, dim=-1)
        p = prototypes.to(device=f.device, dtype=f.dtype)
        if normalize_prototypes:
            p = F.normalize(p, dim=-1)
        return scale * f @ p.t()


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, mean over the batch.

    Args:
        logits: ``[B, C]``; labels: ``[B]`` int64 in ``[0, C)``.

    Returns:
        scalar tensor.
    """
    return F.cross_entropy(logits, labels)


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    # at least float32: under autocast the logits may be bf16/fp16, too coarse for a small KL
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.log_softmax(logits, dim=-1)


def spurious_log_probs(
    features: torch.Tensor, spurious: torch.Tensor, scale: float, normalize_prototypes: bool = True
) -> torch.Tensor:
    """``log P_spur(x; f)``: ``[B, D]`` raw features -> ``[B, K]`` log-softmax over the spurious prototypes,
    in at least float32."""
    return _log_softmax(cosine_logits(features, spurious, scale, normalize_prototypes))


def spurious_kl(
    feat_t: torch.Tensor,
    feat_0: torch.Tensor | None,
    spurious: torch.Tensor,
    scale: float,
    direction: str = "paper",
    normalize_prototypes: bool = True,
    log_p0: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL divergence between the spurious distributions of the fine-tuned and the frozen features.

    Args:
        feat_t: ``[B, D]`` raw features of the encoder being trained (gradients flow here).
        feat_0: ``[B, D]`` raw features of the frozen encoder on the same images (treated as a
            constant: detached). May be None when ``log_p0`` is given.
        spurious: ``[K, D]`` spurious prototypes (``K = M`` templates, or ``k`` after SPC).
        scale: temperature of ``P = softmax(scale * cos)``.
        direction: one of :data:`KL_DIRECTIONS`.

            * ``"paper"`` (default): ``mean_b sum_k P_t (log P_t - log P_0)`` = KL(P_t || P_0), the
              formula the paper writes. It is the default because fdalign implements the method as
              published; it is a proper per-image KL, so ``beta`` does not depend on ``K``.
            * ``"released"``: ``sum_{b,k} P_0 (log P_0 - log P_t) / (B K)``, exactly what the
              authors' ``torch.nn.KLDivLoss()(log P_t, P_0)`` computes; use it (with their beta=20)
              to reproduce their numbers.
        normalize_prototypes: see :func:`cosine_logits`.
        log_p0: ``[B, K]`` precomputed :func:`spurious_log_probs` of ``feat_0`` (the f0 cache).

    Returns:
        scalar tensor, ``>= 0``, zero when ``feat_t == feat_0``.
    """
    if direction not in KL_DIRECTIONS:
        raise FDAlignError(f"unknown KL direction {direction!r}; choose one of {', '.join(KL_DIRECTIONS)}")
    log_p_t = spurious_log_probs(feat_t, spurious, scale, normalize_prototypes)
    if log_p0 is None:
        with torch.no_grad():
            log_p0 = spurious_log_probs(feat_0.detach(), spurious, scale, normalize_prototypes)
    log_p_0 = log_p0.to(device=log_p_t.device, dtype=log_p_t.dtype)
    if direction == "paper":
        return (log_p_t.exp() * (log_p_t - log_p_0)).sum(dim=-1).mean()
    return (log_p_0.exp() * (log_p_0 - log_p_t)).mean()


def fdalign_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    feat_t: torch.Tensor | None,
    feat_0: torch.Tensor | None,
    spurious: torch.Tensor | None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    scale: float,
    direction: str = "paper",
    normalize_prototypes: bool = True,
    log_p0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The FD-Align objective ``alpha * CE + beta * KL``.

    Args:
        logits: ``[B, C]`` classification logits of the fine-tuned model; labels: ``[B]``.
        feat_t, feat_0: ``[B, D]`` raw image features of the trained / frozen encoder.
        spurious: ``[K, D]`` spurious prototypes.
        alpha, beta: weights of the two terms. With ``beta == 0`` the KL term is not computed at
            all (``feat_t``, ``feat_0`` and ``spurious`` may then be None), so training is exactly
            plain fine-tuning and the frozen encoder need not be run.
        scale, direction, normalize_prototypes, log_p0: see :func:`spurious_kl` (with ``log_p0``,
            ``feat_0`` may be None).

    Returns:
        ``(total, {"ce": ce, "kl": kl})``, scalar tensors; ``kl`` is a detached zero when ``beta == 0``.
    """
    if direction not in KL_DIRECTIONS:  # checked even when beta == 0 so a typo never hides
        raise FDAlignError(f"unknown KL direction {direction!r}; choose one of {', '.join(KL_DIRECTIONS)}")
    ce = classification_loss(logits, labels)
    total = ce if alpha == 1 else alpha * ce
    if beta == 0:
        return total, {"ce": ce, "kl": torch.zeros((), device=ce.device, dtype=ce.dtype)}
    if feat_t is None or (feat_0 is None and log_p0 is None) or spurious is None:
        raise ValueError("fdalign_loss needs feat_t, feat_0 (or log_p0) and spurious when beta != 0")
    kl = spurious_kl(feat_t, feat_0, spurious, scale, direction, normalize_prototypes, log_p0)
    return total + beta * kl, {"ce": ce, "kl": kl}
