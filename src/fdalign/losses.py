"""FD-Align's losses as pure functions.

``L = alpha * CE(logits, y) + beta * KL(P_spur(x; f_t), P_spur(x; f_0))`` where
``P_spur(x; f) = softmax_k(scale * cos(f(x), mu_spur[k]))`` is the distribution of an image's
feature over the (corrected) spurious prototypes, ``f_t`` the encoder being fine-tuned and ``f_0``
its frozen copy. The KL term keeps the fine-tuned features' relation to "styles" (templates without
the class) as it was, which is what preserves out-of-distribution robustness.

All functions take raw (unnormalised) features and normalise them themselves.
:class:`FDAlignLoss` is the same objective as a module for users' own training loops; the trainer's
step (:func:`fdalign.train.step.fdalign_forward`) computes its loss with it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

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
        if feat_0 is None:
            raise ValueError("spurious_kl needs feat_0 or log_p0")
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
        logits: ``[B, C]`` classification logits of the fine-tuned model.
        labels: ``[B]`` class indices.
        feat_t: ``[B, D]`` raw image features of the trained encoder.
        feat_0: ``[B, D]`` raw image features of the frozen encoder (may be None with ``log_p0``).
        spurious: ``[K, D]`` spurious prototypes.
        alpha: weight of the cross-entropy term.
        beta: weight of the KL term. With ``beta == 0`` the KL term is not computed at all
            (``feat_t``, ``feat_0`` and ``spurious`` may then be None), so training is exactly
            plain fine-tuning and the frozen encoder need not be run.
        scale: see `spurious_kl`.
        direction: see `spurious_kl`.
        normalize_prototypes: see `spurious_kl`.
        log_p0: see `spurious_kl`.

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


# ----------------------------------------------------------------------------------------------
# the other robust fine-tuning methods' terms (issue 27): same inputs, one function each


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``mean_b sum_k p (log p - log q)`` = KL(p || q) per row, averaged over the rows.

    Args:
        log_p: ``[B, K]`` log-probabilities of the trained side (gradients flow here).
        log_q: ``[B, K]`` log-probabilities of the reference (treated as a constant: detached).

    Returns:
        scalar tensor ``>= 0``.
    """
    log_q = log_q.detach().to(device=log_p.device, dtype=log_p.dtype)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()


def logit_kd(logits_t: torch.Tensor, logits_0: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """LwF-style distillation toward zero-shot: ``KL(P_class(x; ft) || P_class(x; f0))``.

    FD-Align's term with the *class* distribution in place of the spurious one, so the only
    difference between the two methods is which prototypes the KL looks at.

    Args:
        logits_t: ``[B, C]`` class logits of the fine-tuned model.
        logits_0: ``[B, C]`` class logits (or log-probabilities: log-softmax is idempotent) of the
            frozen zero-shot model on the same images; detached.
        temperature: both sides are divided by it before the softmax (LwF's T; 1 = CLIP's own scale).

    Returns:
        scalar tensor ``>= 0``, zero when the two distributions agree.
    """
    return kl_rows(_log_softmax(logits_t / temperature), _log_softmax(logits_0 / temperature))  # kl_rows detaches


def feature_kd(feat_t: torch.Tensor, feat_0: torch.Tensor) -> torch.Tensor:
    """``mean_b (1 - cos(ft(x_b), f0(x_b)))``: keep the fine-tuned features where the frozen ones were.

    Args:
        feat_t: ``[B, D]`` raw features of the fine-tuned encoder; feat_0: ``[B, D]`` of the frozen
            one on the same images (detached).

    Returns:
        scalar tensor in ``[0, 2]``.
    """
    if feat_t.dtype in (torch.float16, torch.bfloat16):  # a cosine near 1 needs float32 to show small moves
        feat_t = feat_t.float()
    f0 = feat_0.detach().to(device=feat_t.device, dtype=feat_t.dtype)
    return (1.0 - F.cosine_similarity(feat_t, f0, dim=-1)).mean()


def l2_sp(params: list[torch.Tensor], start: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i ||theta_i - theta0_i||^2`` over the fine-tuned parameters (Li et al., ICML 2018).

    The L2-SP paper writes ``(alpha / 2) ||w - w0||^2``: its ``alpha`` is twice the weight this
    term gets (``beta``).

    Args:
        params: the trained tensors (any shapes); start: their values before the first step, same
            shapes (detached).

    Returns:
        scalar float32 tensor ``>= 0``.
    """
    if len(params) != len(start):
        raise ValueError(f"l2_sp: {len(params)} parameters but {len(start)} starting points")
    if not params:
        return torch.zeros(())
    # summed in at least float32: squared differences of bf16 weights would round to nothing
    up = lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t  # noqa: E731
    return sum(((up(p) - up(s.detach()).to(p.device)) ** 2).sum() for p, s in zip(params, start))


def clip_contrastive(image_feat: torch.Tensor, text_feat: torch.Tensor, scale: float) -> torch.Tensor:
    """CLIP's symmetric contrastive loss (FLYP's objective) over a batch of (image, caption) pairs.

    Row ``b`` of ``text_feat`` is the caption of image ``b``; every other caption of the batch is a
    negative, same-class ones included (as FLYP does).

    Args:
        image_feat: ``[B, D]`` raw image features; text_feat: ``[B, D]`` raw caption features.
        scale: CLIP's logit scale (exp already applied).

    Returns:
        scalar tensor: ``(CE(S, arange B) + CE(S^T, arange B)) / 2`` with ``S = scale * cos`` ``[B, B]``.
    """
    logits = cosine_logits(image_feat, text_feat, scale)
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# ----------------------------------------------------------------------------------------------
# the frozen encoder f0 and the loss as a module users put in their own loops

F0_MODES = ("eval", "released")


def frozen_copy(encoder: nn.Module, mode: str = "eval", dtype: torch.dtype | None = None) -> nn.Module:
    """``f_0``: an independent deep copy of ``encoder`` as it is now, without gradients.

    ``mode="eval"`` (default) runs it deterministically (BatchNorm running stats, no dropout):
    the reference distribution is then the pretrained model's own test-time answer.
    ``mode="released"`` leaves it in train mode, as the authors' code does (their f0 is a
    second module that follows ``model.train()``); see :func:`set_frozen_mode`.
    ``dtype`` (e.g. bfloat16 on a GPU) stores and runs f0 in lower precision: its features only
    feed a softmax over ~20 spurious prototypes, computed in float32.
    """
    if mode not in F0_MODES:
        raise ValueError(f"f0 mode must be one of {F0_MODES}, got {mode!r}")
    f0 = copy.deepcopy(encoder)
    f0.requires_grad_(False)
    if dtype is not None:
        f0.to(dtype)
    set_frozen_mode(f0, mode)
    return f0


def set_frozen_mode(f0: nn.Module, mode: str) -> None:
    """Put ``f_0`` in the module mode its setting documents (called at every epoch start)."""
    f0.train(mode == "released")


class FDAlignLoss(nn.Module):
    """``alpha * CE + beta * KL(P_spur(x; f_t) || P_spur(x; f_0))`` as a module, like open_clip's ``ClipLoss``.

    Build it with :meth:`from_clip` (a CLIP backend, class names, templates, SPC) or
    :meth:`from_text_encoder`, or directly from prototypes. It owns ``f0`` (a frozen copy of the
    image encoder) when given one, and refers to the fine-tuned ``encoder`` without owning it (its
    parameters stay the caller's). ``forward`` takes either images ``[B,3,H,W]`` (``encoder`` and
    ``f0`` run on them) or the fine-tuned features ``[B,D]`` with ``f0_features`` ``[B,D]`` or
    ``log_p0`` ``[B,K]`` (the f0 cache), and returns ``(loss, {"ce", "kl", "log_p0"})``.

    Args:
        spurious: ``[K, D]`` spurious prototypes (SPC-corrected or one per template).
        class_prototypes: ``[C, D]`` for the default head ``scale * cos(f, mu_class)``; give
            ``logits=`` to ``forward`` instead for another head.
        f0: the frozen image encoder (may be None: then give ``f0_features`` or ``log_p0``).
        encoder: the fine-tuned image encoder (may be None: then give its features).
        alpha: weight of the cross-entropy term (`fdalign_loss`).
        beta: weight of the KL term (`fdalign_loss`).
        scale: temperature of the softmaxes (`fdalign_loss`).
        kl_direction: ``paper`` or ``released`` (`spurious_kl`).
        normalize_prototypes: see `spurious_kl`.
        f0_mode: ``eval`` or ``released`` (:func:`frozen_copy`); ``train()`` keeps f0 in it.
    """

    # buffers and modules, declared for type checkers (nn.Module's __getattr__ would say Tensor | Module)
    spurious: torch.Tensor
    class_prototypes: torch.Tensor | None
    f0: nn.Module | None
    encoder: nn.Module | None

    def __init__(
        self,
        spurious: torch.Tensor,
        *,
        class_prototypes: torch.Tensor | None = None,
        f0: nn.Module | None = None,
        encoder: nn.Module | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        scale: float = 100.0,
        kl_direction: str = "paper",
        normalize_prototypes: bool = True,
        f0_mode: str = "eval",
    ):
        super().__init__()
        if kl_direction not in KL_DIRECTIONS:
            raise FDAlignError(f"unknown KL direction {kl_direction!r}; choose one of {', '.join(KL_DIRECTIONS)}")
        self.register_buffer("spurious", spurious, persistent=False)
        self.register_buffer("class_prototypes", class_prototypes, persistent=False)
        self.f0 = f0
        self.__dict__["encoder"] = encoder  # referenced, not a submodule: its parameters are the caller's
        self.alpha, self.beta, self.scale = float(alpha), float(beta), float(scale)
        self.kl_direction, self.normalize_prototypes, self.f0_mode = kl_direction, normalize_prototypes, f0_mode

    @classmethod
    def from_clip(
        cls,
        backend,
        classnames,
        templates="openai80",
        *,
        spc=True,
        alpha: float = 1.0,
        beta: float = 1.0,
        kl_direction: str = "paper",
        temperature: float | None = None,
        f0_mode: str = "eval",
        f0_dtype: torch.dtype | None = None,
        cache_dir=None,
    ) -> FDAlignLoss:
        """The loss of ``fdalign train`` for ``backend`` (a :func:`fdalign.load_clip` result): prototypes
        from ``templates`` (a set name, a file or a list), SPC (True: the paper's keep 60 / k 20, False:
        none, or an :class:`~fdalign.spc.SPCConfig`), f0 a frozen copy of ``backend.image_encoder``,
        which is the fine-tuned encoder; ``temperature`` defaults to the model's logit scale."""
        from fdalign.prompts import load_templates
        from fdalign.prototypes import build_prototypes
        from fdalign.spc import SPCConfig

        spc = SPCConfig() if spc is True else (spc or None)
        templates = load_templates(templates) if isinstance(templates, str) else list(templates)
        protos = build_prototypes(backend, list(classnames), templates, spc=spc, cache_dir=cache_dir)
        encoder = backend.image_encoder
        return cls(
            protos.loss_prototypes,
            class_prototypes=protos.class_prototypes,
            f0=frozen_copy(encoder, f0_mode, f0_dtype) if beta != 0 else None,
            encoder=encoder,
            alpha=alpha,
            beta=beta,
            scale=temperature or backend.logit_scale,
            kl_direction=kl_direction,
            normalize_prototypes=spc is None or spc.renormalize,
            f0_mode=f0_mode,
        )

    @classmethod
    def from_text_encoder(
        cls,
        encode_text,
        image_encoder: nn.Module,
        classnames,
        templates,
        *,
        scale: float | None = None,
        **options,
    ) -> FDAlignLoss:
        """As :meth:`from_clip` from ``encode_text(list[str]) -> [N, D]`` and the image encoder to fine-tune
        (no prompt cache: the text encoder has no fingerprint). ``scale`` is the model's logit scale,
        exponentiated (``model.logit_scale.exp().item()`` for open_clip), which :meth:`from_clip` reads off
        the model: there is no default to differ from it."""
        from types import SimpleNamespace

        if scale is None:
            raise FDAlignError(
                "FDAlignLoss.from_text_encoder needs scale=, the CLIP model's logit scale (exponentiated, e.g. "
                "model.logit_scale.exp().item()), as from_clip takes it from the model"
            )

        backend = SimpleNamespace(
            encode_text=lambda prompts, **_: encode_text(list(prompts)),
            fingerprint="",
            image_encoder=image_encoder,
            logit_scale=scale,
        )
        return cls.from_clip(backend, classnames, templates, cache_dir=False, **options)

    def train(self, mode: bool = True) -> FDAlignLoss:
        super().train(mode)
        if self.f0 is not None:
            set_frozen_mode(self.f0, self.f0_mode)
        return self

    def f0_log_probs(self, images: torch.Tensor | None = None, f0_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, K]`` ``log P_spur(x; f0)``, float32, no graph: from ``f0_features`` or by running f0 on ``images``."""
        with torch.inference_mode():  # no autograd bookkeeping at all for the frozen pass
            if f0_features is None:
                if images is None or self.f0 is None:
                    raise ValueError(
                        "the KL term needs f0: pass f0_features= or log_p0=, or images to a loss built with f0"
                    )
                f0_dtype = next(self.f0.parameters()).dtype  # bfloat16 when f0 was stored in lower precision
                f0_features = self.f0(images.to(f0_dtype))
            log_p0 = spurious_log_probs(f0_features, self.spurious, self.scale, self.normalize_prototypes)
        return log_p0.clone()  # a normal tensor again, usable by autograd-recording ops

    def forward(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        *,
        logits: torch.Tensor | None = None,
        f0_features: torch.Tensor | None = None,
        log_p0: torch.Tensor | None = None,
    ):
        """``inputs``: images ``[B,3,H,W]`` or fine-tuned features ``[B,D]``; ``labels`` ``[B']`` for
        ``logits`` ``[B',C]`` (default: the class-prototype head on the features)."""
        images = inputs if inputs.dim() == 4 else None
        feats = inputs
        if images is not None:
            if self.encoder is None:
                raise ValueError(
                    "forward(images, labels) needs the fine-tuned encoder: build the loss with encoder=, "
                    "or pass its features"
                )
            feats = self.encoder(images)
        if logits is None:
            if self.class_prototypes is None:
                raise ValueError("no head: build the loss with class_prototypes=, or pass logits=")
            logits = cosine_logits(feats, self.class_prototypes, self.scale)
        if self.beta != 0 and log_p0 is None:
            log_p0 = self.f0_log_probs(images, f0_features)
        use_kl = self.beta != 0
        loss, parts = fdalign_loss(
            logits,
            labels,
            feats,
            None,
            self.spurious if use_kl else None,
            alpha=self.alpha,
            beta=self.beta,
            scale=self.scale,
            direction=self.kl_direction,
            normalize_prototypes=self.normalize_prototypes,
            log_p0=log_p0 if use_kl else None,
        )
        if use_kl and log_p0 is not None:  # always set when use_kl (f0_log_probs above)
            parts["log_p0"] = log_p0.detach()
        return loss, parts
