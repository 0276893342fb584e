"""WiSE-FT (Wortsman et al., 2022): interpolate zero-shot and fine-tuned weights.

``theta(alpha) = (1 - alpha) * theta_zero_shot + alpha * theta_fine_tuned``, applied to the image
encoder and the head alike (the zero-shot head is the prompt-prototype classifier). alpha = 0 is
zero-shot CLIP, alpha = 1 the fine-tuned model; the mixing weight is chosen on val only
(:func:`fdalign.selection.select`), and the others are reported for the robustness curve.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


def interpolate_state_dicts(
    zero_shot: Mapping[str, torch.Tensor], finetuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * zero_shot + alpha * finetuned`` for floating tensors.

    Non-floating tensors (integer buffers such as position ids) are taken from ``finetuned``.
    Interpolation is done in float32 and cast back, so bf16 weights do not lose the mix.

    Raises:
        ValueError: the two state dicts have different keys or shapes.
    """
    if set(zero_shot) != set(finetuned):
        diff = sorted(set(zero_shot) ^ set(finetuned))
        raise ValueError(f"state dicts differ in keys, e.g. {diff[:3]}")
    alpha = float(alpha)
    out = {}
    for k, ft in finetuned.items():
        zs = zero_shot[k]
        if zs.shape != ft.shape:
            raise ValueError(f"{k}: shape {tuple(zs.shape)} vs {tuple(ft.shape)}")
        if not ft.is_floating_point():
            out[k] = ft.clone()
        elif alpha == 1.0:  # exact endpoints: no rounding from the float32 detour
            out[k] = ft.detach().clone()
        elif alpha == 0.0:
            out[k] = zs.detach().to(device=ft.device, dtype=ft.dtype).clone()
        else:
            mixed = torch.lerp(zs.detach().to(ft.device, torch.float32), ft.detach().float(), alpha)
            out[k] = mixed.to(ft.dtype)
    return out


def interpolate_module(zero_shot: nn.Module, finetuned: nn.Module, alpha: float) -> nn.Module:
    """A new module (deep copy of ``finetuned``) holding the interpolated weights."""
    mixed = copy.deepcopy(finetuned)
    mixed.load_state_dict(interpolate_state_dicts(zero_shot.state_dict(), finetuned.state_dict(), alpha))
    return mixed


def wiseft_model(
    zs_encoder: nn.Module, ft_encoder: nn.Module, zs_head: nn.Module, ft_head: nn.Module, alpha: float
) -> tuple[nn.Module, nn.Module]:
    """``(encoder, head)`` at mixing weight ``alpha``: both interpolated, encoder *and* head.

    The endpoints return the given modules themselves (no copy), so alpha 0 / 1 share features
    with the zero-shot / fine-tuned rows of an evaluation. An encoder that was never trained (the
    same object on both sides, a linear probe) is shared, not copied. A head of another kind than
    the zero-shot one (trainable vs frozen prototypes) cannot be interpolated key by key; then the
    fine-tuned head is kept and only the encoder is mixed.
    """
    if alpha == 0.0:
        return zs_encoder, zs_head
    if alpha == 1.0:
        return ft_encoder, ft_head
    enc = ft_encoder if zs_encoder is ft_encoder else interpolate_module(zs_encoder, ft_encoder, alpha)
    same_kind = getattr(zs_head, "kind", None) == getattr(ft_head, "kind", None)
    head = interpolate_module(zs_head, ft_head, alpha) if same_kind else copy.deepcopy(ft_head)
    return enc, head


def alpha_name(alpha: float) -> str:
    """Model name used in metrics and reports: ``wiseft-0.5``."""
    return f"wiseft-{float(alpha):g}"


__all__ = ["interpolate_state_dicts", "interpolate_module", "wiseft_model", "alpha_name"]
