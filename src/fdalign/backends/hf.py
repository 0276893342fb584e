"""Hugging Face transformers backend: ``hf:<repo id>`` or ``hf:<directory saved with save_pretrained>``.

The directory (or repo) must hold a ``CLIPModel`` plus its tokenizer; a ``CLIPImageProcessor``
config gives mean/std/interpolation (OpenAI's values are used, with a warning, if it is missing).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from fdalign.backends.base import CLIPBackend, ImageSpec
from fdalign.backends.openclip import _digest, _short, file_stamp
from fdalign.backends.registry import register_backend
from fdalign.errors import FDAlignError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# PIL resampling codes as stored in preprocessor_config.json -> torchvision interpolation names.
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_REPO_ID = re.compile(r"^[\w.\-]+(/[\w.\-]+)?$")


class HFImageEncoder(nn.Module):
    """``vision_model`` + ``visual_projection`` of a ``CLIPModel``: ``[B, 3, H, W] -> [B, D]``.

    Holds the very submodules of the CLIPModel, so training this trains the backend's model and its
    ``state_dict`` keys are ``vision_model.*`` / ``visual_projection.*``.
    """

    def __init__(self, vision_model: nn.Module, visual_projection: nn.Module):
        super().__init__()
        self.vision_model = vision_model
        self.visual_projection = visual_projection

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.visual_projection.weight.dtype)
        pooled = self.vision_model(pixel_values=images).pooler_output
        return self.visual_projection(pooled)


class HFTextTower(nn.Module):
    """``text_model`` + ``text_projection`` of a ``CLIPModel``: token ids ``[N, L]`` -> ``[N, D]``.

    No attention mask is needed for padded ids: CLIP's text attention is causal and pools at the first
    end-of-text token, which sees nothing after it."""

    def __init__(self, text_model: nn.Module, text_projection: nn.Module):
        super().__init__()
        self.text_model = text_model
        self.text_projection = text_projection

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        pooled = self.text_model(input_ids=input_ids).pooler_output
        return self.text_projection(pooled)


def _not_found(ident: str, why: str) -> FDAlignError:
    return FDAlignError(
        f"could not load hf:{ident}: {why}. Give a directory saved with CLIPModel.save_pretrained(dir) "
        "and the tokenizer's / image processor's save_pretrained(dir) (make it on a machine with "
        "network access from the Hub repo), then pass hf:/path/to/dir"
    )


def _get(size, key: str):
    """A field of a processor size (a dict in transformers 4, a SizeDict in 5)."""
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _image_spec(processor, image_size: int) -> ImageSpec:
    """Size, crop, mean/std and interpolation as the processor states them (``size``, ``crop_size``,
    ``do_center_crop``); the model's ``image_size`` only fills what the processor leaves open."""
    if processor is None:
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        return ImageSpec(image_size, tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD), "bicubic")
    resample = getattr(processor, "resample", 3)
    interpolation = _RESAMPLE.get(int(resample), "bicubic") if resample is not None else "bicubic"
    size, crop = getattr(processor, "size", None), getattr(processor, "crop_size", None)
    short, h, w = _get(size, "shortest_edge"), _get(size, "height"), _get(size, "width")
    resize = int(short) if short else (int(h), int(w)) if h and w else int(image_size)
    if not getattr(processor, "do_resize", True):
        resize = int(image_size)
    center_crop = bool(getattr(processor, "do_center_crop", True))
    ch, cw = _get(crop, "height"), _get(crop, "width")
    final = int(ch) if center_crop and ch else int(image_size)
    if center_crop and ch and cw and int(ch) != int(cw):
        raise FDAlignError(
            f"the image processor's crop_size {int(ch)}x{int(cw)} is not square; CLIP needs square images"
        )
    if not center_crop and isinstance(resize, int):
        # no crop: a short-side resize would leave a non-square image, which the ViT cannot take
        resize = (resize, resize)
    if not center_crop:
        final = resize[0]
    if final != int(image_size):
        warnings.warn(
            f"the image processor gives {final}px images but the model was built for {image_size}px", stacklevel=3
        )
    if center_crop and resize == final:
        resize = None  # the plain CLIP recipe: resize and crop to the same size
    return ImageSpec(
        size=final,
        mean=tuple(float(x) for x in processor.image_mean),
        std=tuple(float(x) for x in processor.image_std),
        interpolation=interpolation,
        resize=resize,
        center_crop=center_crop,
    )


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub (``HF_ENDPOINT``) answers within ``timeout`` seconds: checked before any download
    attempt because, with no network, the hub client retries for about half a minute before failing."""
    from fdalign.backends.hub import host_reachable, hub_endpoint

    return host_reachable(hub_endpoint(), timeout)


def _offline_reason() -> str | None:
    """Why the Hub cannot be asked (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, or no network), or None."""
    from fdalign.backends.hub import offline_switch

    var = offline_switch()
    if var:
        return f"{var} is set"
    if not _hub_reachable():
        return f"no network connection to {os.environ.get('HF_ENDPOINT') or 'huggingface.co'}"
    return None


def _offline_error(ident: str, reason: str) -> FDAlignError:
    return FDAlignError(
        f"hf:{ident} is not in the local Hugging Face cache and the Hub cannot be reached ({reason}). "
        f"Pre-download it on a machine with network: `hf download {ident}` (then copy its cache, "
        "~/.cache/huggingface or $HF_HOME, here), or save CLIPModel, tokenizer and image processor with "
        "save_pretrained(dir) and pass hf:/path/to/dir"
    )


class HFCLIPBackend(CLIPBackend):
    """A ``transformers.CLIPModel``.

    Attributes (besides :class:`CLIPBackend`'s): ``model`` (the CLIPModel), ``tokenizer``,
    ``processor`` (the CLIPImageProcessor or None), ``source`` (repo id or directory).
    """

    def __init__(self, model, tokenizer, processor, *, source: str, fingerprint: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.processor = processor
        self.source = source
        self.name = f"hf:{source}"
        self.fingerprint = fingerprint
        self._image_encoder = HFImageEncoder(model.vision_model, model.visual_projection)
        # The text tower and logit_scale are frozen for good; only the image tower trains.
        self.model.requires_grad_(False)
        self._image_encoder.requires_grad_(True)
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.embed_dim = int(model.config.projection_dim)
        self.image_spec = _image_spec(processor, model.config.vision_config.image_size)
        limit = model.config.text_config.max_position_embeddings
        tok_limit = getattr(tokenizer, "model_max_length", None) or limit
        self._max_length = int(min(limit, tok_limit))

    @classmethod
    def load(
        cls,
        model: str | None,
        pretrained: str | None = None,
        model_config: str | Path | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> HFCLIPBackend:
        ident = (model or "").strip()
        if not ident:
            raise FDAlignError("hf: needs a repo id or a directory, e.g. hf:/path/to/saved_clip")
        if pretrained is not None or model_config is not None:
            raise FDAlignError(
                f"--pretrained / --model-config are not used with hf:{ident}: the weights and "
                "architecture come from that repo or directory; drop them"
            )
        path = Path(ident).expanduser()
        local = path.is_dir()
        if not local:
            if path.exists():
                raise _not_found(ident, f"{path} is a file, not a directory")
            if not _REPO_ID.match(ident) or ident.startswith((".", "~")):
                raise _not_found(ident, f"directory not found: {path}")
        src = str(path.resolve()) if local else ident

        import transformers
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel
        from transformers.utils import logging as hf_logging

        # transformers 5 renamed torch_dtype to dtype
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        dtype = {dtype_kw: _DTYPES[precision]}
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a per-tensor "Loading weights" bar is noise in fdalign's output
        try:
            kw = {"local_files_only": True}
            try:  # the local cache first: no network round trip, and no 30 s of retries when offline
                net = CLIPModel.from_pretrained(src, **dtype, **kw)
            except Exception as e:  # OSError: not cached / missing files, ValueError for non-CLIP configs
                if local:
                    raise _not_found(ident, _short(e)) from None
                reason = _offline_reason()
                if reason:
                    raise _offline_error(ident, reason) from None
                kw = {}
                try:
                    net = CLIPModel.from_pretrained(src, **dtype)
                except Exception as e2:
                    raise _not_found(
                        ident, f"{_short(e2)} (no directory of that name, and the Hub could not provide it)"
                    ) from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        except Exception as e:
            raise _not_found(ident, f"no usable tokenizer ({_short(e)})") from None
        try:
            processor = CLIPImageProcessor.from_pretrained(src, **kw)
        except Exception:
            warnings.warn(
                f"hf:{ident} has no image processor config; using OpenAI CLIP's mean/std and bicubic resizing",
                stacklevel=2,
            )
            processor = None

        if local:
            stamp = ["hf", [file_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]]
        else:
            stamp = ["hf", ident, getattr(net.config, "_commit_hash", None)]
        backend = cls(net, tokenizer, processor, source=src, fingerprint=_digest(stamp + [precision]))
        return backend.to(device)

    @property
    def image_encoder(self) -> nn.Module:
        return self._image_encoder

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        from tqdm.auto import tqdm

        texts = list(texts)
        dev = self.device
        out = []
        with torch.no_grad():
            for i in tqdm(range(0, len(texts), batch_size), desc="encode text", disable=not progress, unit="batch"):
                batch = self.tokenizer(
                    texts[i : i + batch_size],
                    padding=True,
                    truncation=True,
                    max_length=self._max_length,
                    return_tensors="pt",
                ).to(dev)
                feats = self.model.get_text_features(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                )
                # transformers 5 returns an output object whose pooler_output is projected; 4.x a tensor.
                feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
                out.append(feats.float().cpu())
        if not out:
            return torch.empty(0, self.embed_dim)
        return torch.cat(out)

    @property
    def text_tower(self) -> nn.Module:
        if getattr(self, "_text_tower", None) is None:
            self._text_tower = HFTextTower(self.model.text_model, self.model.text_projection)
        return self._text_tower

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self._max_length, return_tensors="pt"
        )
        return batch["input_ids"].long()

    def to(self, device: torch.device | str) -> HFCLIPBackend:
        self.model.to(device)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        if not getattr(self.model, "supports_gradient_checkpointing", False):
            return False
        # Non-reentrant: gradients reach the weights even though the input images need none.
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5 name
            if enable:
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.model.activation_checkpointing_disable()
        elif enable:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_disable()
        return True


register_backend("hf")(HFCLIPBackend)
