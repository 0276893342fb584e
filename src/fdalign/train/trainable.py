"""Which parameters of an encoder learn: the one place that decides it.

``--trainable`` picks one :class:`TrainableSpec` kind:

* ``full``: every parameter (the paper's setting);
* ``lora``: low-rank adapters from the ``peft`` library on the attention (and optionally MLP)
  layers, everything else frozen; the frozen encoder ``f0`` of FD-Align is then the *same* module
  with its adapters switched off (:func:`adapters_disabled`), not a second copy;
* ``last-blocks:N``: the last N transformer blocks and what follows them (final norm, projection);
* ``layernorm``: the norm layers' gains and biases;
* ``bias``: every bias (BitFit);
* ``projection``: the tower's final projection only.

Everything here works on any ``nn.Module`` (an image tower, a text tower, a whole CLIP model): the
layers are found by type (``nn.MultiheadAttention``, ``nn.Linear``, norm layers) and by the
conventional names of open_clip and Hugging Face CLIP. This module imports peft lazily: a run with
``--trainable full`` never needs it, and a merged LoRA model is a plain module again.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from fdalign.errors import FDAlignError

if TYPE_CHECKING:  # torch is imported by the functions: config.py parses a spec without it
    import torch
    from torch import nn

KINDS = ("full", "lora", "last-blocks:N", "layernorm", "bias", "projection")
ADAPTER_NAME = "default"  # peft's default adapter name; one adapter per run
# --lora-targets words; anything else is taken as a module-name suffix (e.g. c_fc)
TARGET_WORDS = ("attn", "qkv", "mlp")
_HF_ATTN = ("q_proj", "k_proj", "v_proj", "out_proj")
_MLP_LINEARS = ("c_fc", "c_proj", "fc1", "fc2")  # open_clip / Hugging Face MLP layers
# parameters that follow the last block of a tower (open_clip, Hugging Face): trained by last-blocks:N
_AFTER_BLOCKS = (
    "ln_post",
    "proj",
    "post_layernorm",
    "visual_projection",
    "ln_final",
    "text_projection",
    "final_layer_norm",
)
_PROJECTIONS = ("proj", "visual_projection", "text_projection")


@dataclass(frozen=True)
class TrainableSpec:
    """What learns in an encoder.

    Attributes:
        kind: ``full``, ``lora``, ``last-blocks`` (with ``blocks`` = N), ``layernorm``, ``bias`` or ``projection``.
        blocks: N of ``last-blocks:N``.
        lora_rank, lora_alpha, lora_dropout: peft's ``r``, ``lora_alpha`` (the update is scaled by alpha / r)
            and ``lora_dropout``.
        lora_targets: comma-separated ``attn`` (attention q/k/v + output projections), ``qkv`` (q/k/v only
            where they are separate linears), ``mlp``, or module-name suffixes.
    """

    kind: str = "full"
    blocks: int = 0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "attn"
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(
        cls,
        trainable: str,
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_targets: str = "attn",
        source: str = "the config",
    ) -> TrainableSpec:
        """``"lora"``, ``"last-blocks:2"``, ... -> a spec; a bad value is an :class:`FDAlignError` naming the field."""
        text = str(trainable).strip().lower()
        blocks = 0
        kind = text
        m = re.fullmatch(r"last-blocks:(\S+)", text)
        if m:
            kind = "last-blocks"
            try:
                blocks = int(m.group(1))
            except ValueError:
                blocks = -1
            if blocks < 1:
                raise FDAlignError(f"{source}: trainable = {trainable!r} needs a whole number N >= 1: last-blocks:2")
        elif kind not in KINDS or kind == "last-blocks:N":
            raise FDAlignError(f"{source}: trainable = {trainable!r} is not one of {', '.join(KINDS)}")
        if kind == "lora":
            if int(lora_rank) < 1:
                raise FDAlignError(f"{source}: lora_rank = {lora_rank!r} must be >= 1")
            if not float(lora_alpha) > 0:
                raise FDAlignError(f"{source}: lora_alpha = {lora_alpha!r} must be > 0")
            if not 0 <= float(lora_dropout) < 1:
                raise FDAlignError(f"{source}: lora_dropout = {lora_dropout!r} must be in [0, 1)")
            if not [t for t in str(lora_targets).split(",") if t.strip()]:
                raise FDAlignError(
                    f"{source}: lora_targets is empty; give attn, qkv, mlp or module names, e.g. attn,mlp"
                )
        return cls(kind, blocks, int(lora_rank), float(lora_alpha), float(lora_dropout), str(lora_targets))

    @classmethod
    def from_config(cls, cfg, source: str = "the config") -> TrainableSpec:
        """The spec of a :class:`~fdalign.train.config.TrainConfig` (or anything with the same fields)."""
        return cls.parse(
            getattr(cfg, "trainable", "full"),
            getattr(cfg, "lora_rank", 8),
            getattr(cfg, "lora_alpha", 16.0),
            getattr(cfg, "lora_dropout", 0.0),
            getattr(cfg, "lora_targets", "attn"),
            source,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


# ----------------------------------------------------------------------------------------------
# finding layers


def _tuner_layer_type():
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer


def lora_target_names(module: nn.Module, which: str = "attn") -> list[str]:
    """Names of the submodules of ``module`` that LoRA adapts for ``which`` (see :class:`TrainableSpec`).

    ``attn``: every ``nn.MultiheadAttention`` (open_clip's fused in-projection; peft adapts its
    in- and output projections together) and every linear named ``q_proj``/``k_proj``/``v_proj``/
    ``out_proj`` outside one (Hugging Face). ``qkv``: the same without ``out_proj`` (an
    ``nn.MultiheadAttention`` is still adapted whole: peft cannot split it). ``mlp``: the linears
    of the MLPs (``c_fc``/``c_proj``, ``fc1``/``fc2``). Any other word is a module-name suffix.
    Works for an image tower, a text tower or a whole model. Raises :class:`FDAlignError` when
    nothing matches.
    """
    from torch import nn

    words = [w.strip() for w in str(which).split(",") if w.strip()]
    mha = {n for n, m in module.named_modules() if isinstance(m, nn.MultiheadAttention)}

    def inside_mha(name: str) -> bool:
        return any(name.startswith(p + ".") for p in mha)

    names: list[str] = []
    for name, m in module.named_modules():
        if not name or inside_mha(name):
            continue
        last = name.rsplit(".", 1)[-1]
        for w in words:
            if w in ("attn", "qkv") and name in mha:
                hit = True
            elif w == "attn":
                hit = isinstance(m, nn.Linear) and last in _HF_ATTN
            elif w == "qkv":
                hit = isinstance(m, nn.Linear) and last in _HF_ATTN[:3]
            elif w == "mlp":
                hit = isinstance(m, nn.Linear) and last in _MLP_LINEARS and ".mlp." in f".{name}."
            else:
                hit = name == w or name.endswith("." + w)
            if hit:
                names.append(name)
                break
    if not names:
        raise FDAlignError(
            f"lora_targets = {which!r} matches no layer of this {type(module).__name__}; "
            "use attn, qkv, mlp or the name of a linear layer"
        )
    return names


def _block_list(module: nn.Module) -> tuple[str, nn.ModuleList]:
    """The tower's list of transformer blocks: its ``nn.ModuleList`` holding the most parameters."""
    from torch import nn

    best, best_n = None, 0
    for name, m in module.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0:
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = (name, m), n
    if best is None:
        raise FDAlignError(
            f"trainable last-blocks:N needs a transformer tower (a list of blocks); {type(module).__name__} has none: "
            "use full, lora, layernorm, bias or projection"
        )
    return best


def trainable_parameter_names(module: nn.Module, spec: TrainableSpec) -> list[str]:
    """Names (as in ``module.named_parameters()``) of the parameters that learn under ``spec``."""
    from torch import nn

    named = list(module.named_parameters())
    if spec.kind == "full":
        return [n for n, _ in named]
    if spec.kind == "lora":
        return [n for n, _ in named if ".lora_" in f".{n}"]
    if spec.kind == "bias":
        return [n for n, _ in named if n.rsplit(".", 1)[-1].endswith("bias")]
    if spec.kind == "layernorm":
        norms = {
            n
            for n, m in module.named_modules()
            if isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(m).__name__
        }
        return [n for n, _ in named if n.rpartition(".")[0] in norms]
    if spec.kind == "projection":
        out = [n for n, _ in named if any(c in _PROJECTIONS for c in n.split(".")[:2])]
        if not out:
            raise FDAlignError(
                f"trainable projection: {type(module).__name__} has no final projection (proj / visual_projection); "
                "use another --trainable"
            )
        return out
    if spec.kind == "last-blocks":
        prefix, blocks = _block_list(module)
        if spec.blocks > len(blocks):
            raise FDAlignError(
                f"trainable last-blocks:{spec.blocks} asks for more blocks than the tower has ({len(blocks)}); "
                f"use at most last-blocks:{len(blocks)}, or full"
            )
        keep = [f"{prefix}.{i}." if prefix else f"{i}." for i in range(len(blocks) - spec.blocks, len(blocks))]
        block_prefix = f"{prefix}." if prefix else ""
        return [
            n
            for n, _ in named
            if any(n.startswith(k) for k in keep)
            or (not n.startswith(block_prefix) and any(c in _AFTER_BLOCKS for c in n.split(".")))
        ]
    raise ValueError(f"unknown trainable kind {spec.kind!r}")


# ----------------------------------------------------------------------------------------------
# applying a spec


def apply_trainable(module: nn.Module, spec: TrainableSpec, seed: int | None = None) -> nn.Module:
    """Freeze ``module`` except what ``spec`` trains; for ``lora``, add peft adapters first (in place).

    Returns ``module`` itself (the same object: a backend's ``image_encoder`` keeps pointing at it).
    The adapters start as peft initialises them (``lora_B = 0``), so the adapted module computes
    exactly what the base one does until it is trained. ``seed``: ``lora_A``'s random start is drawn
    under it (a run repeats itself), without touching the caller's random state.
    """
    if spec.kind == "lora" and not has_adapters(module):
        import torch
        from peft import LoraConfig, inject_adapter_in_model

        config = LoraConfig(
            r=spec.lora_rank,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=lora_target_names(module, spec.lora_targets),
            bias="none",
        )
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            inject_adapter_in_model(config, module, adapter_name=ADAPTER_NAME)
        _keep_mha_base_weights(module)
    set_trainable(module, spec)
    return module


def set_trainable(module: nn.Module, spec: TrainableSpec, on: bool = True) -> list[nn.Parameter]:
    """``requires_grad`` as ``spec`` says (everything off when ``on`` is False); returns the learning parameters."""
    names = set(trainable_parameter_names(module, spec)) if on else set()
    out = []
    for n, p in module.named_parameters():
        p.requires_grad_(n in names)
        if n in names:
            out.append(p)
    return out


def has_adapters(module: nn.Module) -> bool:
    """Whether ``module`` holds peft adapter layers (without importing peft when it cannot)."""
    if not any(".lora_" in f".{n}" for n, _ in module.named_parameters()):
        return False
    layer = _tuner_layer_type()
    return any(isinstance(m, layer) for m in module.modules())


def _tuner_layers(module: nn.Module) -> list[nn.Module]:
    layer = _tuner_layer_type()
    return [m for m in module.modules() if isinstance(m, layer)]


def _keep_mha_base_weights(module: nn.Module) -> None:
    """Keep the frozen base weights of peft's MultiheadAttention layers bit for bit.

    peft runs an adapted ``nn.MultiheadAttention`` by merging ``W + BA`` before the call and
    subtracting ``BA`` after it; ``(W + BA) - BA`` is not ``W`` in floating point, so the
    "frozen" weights would drift by rounding at every forward and ``f0`` (the same module with the
    adapters off) would slowly stop being the pretrained encoder. The hooks put the very
    parameter objects back after each call.
    """
    from peft.tuners.lora.layer import MultiheadAttention as LoraMHA

    for m in module.modules():
        if isinstance(m, LoraMHA) and not getattr(m, "_fdalign_keeps_base", False):
            m.register_forward_pre_hook(_save_base)
            m.register_forward_hook(_restore_base, always_call=True)
            m._fdalign_keeps_base = True


def _mha_slots(layer: nn.Module) -> list[tuple[nn.Module, str]]:
    base = layer.get_base_layer()
    return [(base, "in_proj_weight"), (base.out_proj.get_base_layer(), "weight")]


def _save_base(layer: nn.Module, args) -> None:
    if not layer.merged:  # a merged layer runs its merged weights as they are
        layer._fdalign_saved = [(owner, name, getattr(owner, name)) for owner, name in _mha_slots(layer)]


def _restore_base(layer: nn.Module, args, output) -> None:
    saved = layer.__dict__.pop("_fdalign_saved", None)
    if saved is None or layer.merged:
        return
    for owner, name, param in saved:
        if name in owner._parameters or hasattr(owner, name):
            delattr(owner, name)
        owner.register_parameter(name, param)


# ----------------------------------------------------------------------------------------------
# using the adapters


@contextlib.contextmanager
def adapters_disabled(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block ``module`` computes what the base module does (adapters switched off).

    peft's switch also clears ``requires_grad`` of the adapters; it is put back as it was, so an
    optimiser built before keeps training them.
    """
    layers = _tuner_layers(module)
    grads = [(p, p.requires_grad) for p in module.parameters()]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield module
    finally:
        for m in layers:
            m.enable_adapters(True)
        for p, g in grads:
            p.requires_grad_(g)


@functools.cache
def _adapters_off_class():
    from torch import nn

    class AdaptersOff(nn.Module):
        """FD-Align's ``f0`` when the encoder has LoRA adapters: the same module, adapters off.

        No second copy of the encoder exists: the forward switches the adapters off and puts the
        module in ``f0``'s mode (``eval``: deterministic; ``released``: train mode) for the call, then
        restores both. The encoder is referenced, not owned (``state_dict`` is empty), and ``train()`` /
        ``eval()`` on the wrapper (FDAlignLoss and the trainer call them) leave the encoder's mode alone.
        """

        def __init__(self, encoder: nn.Module, mode: str = "eval"):
            super().__init__()
            self.__dict__["encoder"] = encoder
            self.mode = mode

        def parameters(self, recurse: bool = True):
            return self.encoder.parameters(recurse)  # FDAlignLoss reads f0's dtype from its first one

        def train(self, mode: bool = True):
            return self

        def forward(self, images):
            enc = self.encoder
            modes = [(m, m.training) for m in enc.modules()]
            enc.train(self.mode == "released")
            try:
                with adapters_disabled(enc):
                    return enc(images)
            finally:
                for m, t in modes:
                    m.training = t

    return AdaptersOff


def frozen_view(encoder: nn.Module, mode: str = "eval") -> nn.Module:
    """``f0`` for an adapted encoder (:class:`AdaptersOff`); a plain encoder has none (copy it instead)."""
    if not has_adapters(encoder):
        raise ValueError("frozen_view needs an encoder with adapters; use fdalign.losses.frozen_copy for a plain one")
    return _adapters_off_class()(encoder, mode)


def merge_adapters(module: nn.Module, inplace: bool = False) -> nn.Module:
    """A plain module computing what ``module`` computes with its adapters on: ``W + (alpha/r) B A`` folded
    into the base weights by peft, the adapter layers removed. Its ``state_dict`` has the base model's keys
    and loads without peft. ``inplace`` unloads ``module`` itself (no copy); otherwise ``module`` is unchanged.
    """
    out = module if inplace else copy.deepcopy(module)
    layer = _tuner_layer_type()
    tops = [n for n, m in out.named_modules() if isinstance(m, layer)]
    tops = [n for n in tops if not any(n.startswith(t + ".") for t in tops if t != n)]
    for name in tops:
        parent_name, _, child = name.rpartition(".")
        parent = out.get_submodule(parent_name) if parent_name else out
        target = getattr(parent, child)
        if hasattr(target, "unload_and_optionally_merge_module"):  # peft's MultiheadAttention
            plain = target.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
        else:
            target.merge()
            plain = target.get_base_layer()
        setattr(parent, child, plain)
    if hasattr(out, "peft_config"):
        del out.peft_config
    return out


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights (``lora_A`` / ``lora_B``), keyed as in ``module.state_dict()``."""
    return {k: v for k, v in module.state_dict().items() if ".lora_" in f".{k}"}


def scale_adapters(module: nn.Module, alpha: float) -> nn.Module:
    """WiSE-FT of a LoRA model: the update ``(lora_alpha/r) B A`` scaled to ``alpha`` times its trained size.

    With ``W(alpha) = W0 + alpha * dW`` this equals ``(1 - alpha) W0 + alpha (W0 + dW)``, the weight
    interpolation of WiSE-FT between the base and the merged model, without a copy of the weights.
    Absolute, not cumulative: ``scale_adapters(m, 1)`` restores the trained update. In place; returns ``module``.
    """
    for m in _tuner_layers(module):
        if hasattr(m, "unscale_layer"):
            m.unscale_layer()  # back to lora_alpha / r
            m.scale_layer(float(alpha))
    return module


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts of ``module``."""
    params = list(module.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


__all__ = [
    "KINDS",
    "TrainableSpec",
    "lora_target_names",
    "trainable_parameter_names",
    "apply_trainable",
    "set_trainable",
    "has_adapters",
    "adapters_disabled",
    "frozen_view",
    "merge_adapters",
    "adapter_state_dict",
    "scale_adapters",
    "count_parameters",
]
