"""open_clip backend: named models with pretrained tags, checkpoint files, custom configs, built-ins.

Sources, in the order they are tried:

- ``model_config=path.json``: a custom architecture. Weights come from ``pretrained`` (a checkpoint
  file) or, only when asked for explicitly, ``pretrained="random"``.
- ``hf-hub:<repo>`` / ``local-dir:<dir>``: passed through to open_clip unchanged.
- a built-in fdalign model: ``<name>.json`` + ``<name>.safetensors`` in :func:`assets_dir`
  (``src/fdalign/assets``, or ``$FDALIGN_ASSETS``). Weights are stored fp16 and loaded into fp32.
- an ``open_clip.list_models()`` name with ``pretrained`` = a tag (``openai``,
  ``laion2b_s34b_b79k``, ...) or a checkpoint file.

A config JSON (custom or built-in) is either a plain open_clip model config (``embed_dim``,
``vision_cfg``, ``text_cfg``) or ``{"model_cfg": {...}, "preprocess_cfg": {"mean": ..., "std":
..., "interpolation": ...}}`` as in open_clip's ``open_clip_config.json``.
"""

from __future__ import annotations

import atexit
import difflib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fdalign.backends.base import CLIPBackend, ImageSpec
from fdalign.backends.registry import register_backend
from fdalign.errors import FDAlignError

ASSETS_ENV = "FDALIGN_ASSETS"
BUILTIN_PREFIX = "fdalign-"
RANDOM = "random"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_SCHEMES = ("hf-hub:", "local-dir:")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


# ----------------------------------------------------------------------------------------------
# Built-in models shipped in the package


def assets_dir() -> Path:
    """Folder holding the built-in models; ``$FDALIGN_ASSETS`` overrides the packaged one."""
    env = os.environ.get(ASSETS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(str(resources.files("fdalign").joinpath("assets")))


def builtin_models() -> dict[str, Path]:
    """Built-in model name -> its config JSON, for every ``<name>.json`` + ``<name>.safetensors`` pair."""
    d = assets_dir()
    if not d.is_dir():
        return {}
    return {p.stem: p for p in sorted(d.glob("*.json")) if p.with_suffix(".safetensors").is_file()}


# ----------------------------------------------------------------------------------------------
# Small helpers


def _digest(obj: Any, n: int = 16) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_stamp(path: str | Path) -> list:
    """Identity of a file without reading it: absolute path, size, mtime (GB checkpoints stay fast)."""
    p = Path(path).resolve()
    st = p.stat()
    return [str(p), st.st_size, st.st_mtime_ns]


def _dir_stamp(path: Path) -> list:
    return [file_stamp(p) for p in sorted(path.iterdir()) if p.is_file()]


def _state_digest(module: nn.Module) -> str:
    """Hash of the actual tensors; only used for random init, where there is no file to stamp."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _short(e: BaseException, limit: int = 300) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.startswith(("~", ".")) or s.lower().endswith(CHECKPOINT_SUFFIXES)


def read_model_config(path: str | Path) -> tuple[dict, dict]:
    """Read an open_clip config JSON -> ``(model_cfg, preprocess_cfg)``; accepts both layouts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FDAlignError(f"model config not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FDAlignError(f"model config {path} is not valid JSON: {_short(e)}") from None
    if not isinstance(data, dict):
        raise FDAlignError(f"model config {path} must be a JSON object")
    model_cfg = data.get("model_cfg", data)
    preprocess_cfg = data.get("preprocess_cfg", {}) if "model_cfg" in data else {}
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in model_cfg]
    if missing:
        raise FDAlignError(
            f"model config {path} lacks {', '.join(missing)}: an open_clip model config needs "
            "embed_dim, vision_cfg and text_cfg (see open_clip/model_configs/*.json)"
        )
    return model_cfg, preprocess_cfg


_STAGING: Path | None = None


def _register_config(name: str, model_cfg: dict) -> str:
    """Make ``model_cfg`` known to open_clip under a private key and return that key.

    The key carries a hash of the config so a custom config never shadows an open_clip built-in of
    the same name (``--model ViT-B-32 --model-config mine.json`` must not change ``ViT-B-32`` for
    the rest of the process), and two different configs with one name do not collide.
    """
    import open_clip

    global _STAGING
    if _STAGING is None:
        # open_clip re-reads every registered config file on each add_model_config, so the files
        # must live as long as the process; remove them when it exits.
        _STAGING = Path(tempfile.mkdtemp(prefix="fdalign-openclip-configs-"))
        atexit.register(shutil.rmtree, _STAGING, ignore_errors=True)
    key = f"{name.replace('/', '-')}-fdalign-{_digest(model_cfg, 8)}"
    path = _STAGING / f"{key}.json"
    if not path.is_file():
        path.write_text(json.dumps(model_cfg))
        open_clip.add_model_config(path)
    return key


# ----------------------------------------------------------------------------------------------
# Resolving what the user asked for


@dataclass
class _Source:
    """Everything needed to build the model, decided before anything heavy happens."""

    key: str  # the name passed to open_clip.create_model / get_tokenizer
    name: str  # shown to the user
    weights: str | None  # tag, checkpoint path, or None for random / schema models
    kind: str  # "tag" | "file" | "random" | "schema"
    preprocess: dict = field(default_factory=dict)
    stamp: list = field(default_factory=list)  # fingerprint ingredients
    label: str | None = None  # what ``backend.pretrained`` reports


def _checkpoint(pretrained: str, hint: str = "") -> Path:
    p = Path(pretrained).expanduser()
    if not p.is_file():
        raise FDAlignError(f"checkpoint file not found: {p}{hint}")
    return p


def _weights_for_config(name: str, pretrained: str | None, cfg_path: Path) -> tuple[str | None, str, list]:
    if pretrained is None:
        raise FDAlignError(
            f"model config {cfg_path} comes without weights: pass --pretrained /path/to/checkpoint "
            f"(.pt/.bin/.safetensors) for {name}, or --pretrained {RANDOM} for an untrained model"
        )
    if pretrained == RANDOM:
        return None, "random", [RANDOM]
    hint = f" (with a custom model config, --pretrained must be a checkpoint file or '{RANDOM}')"
    ckpt = _checkpoint(pretrained, hint)
    return str(ckpt), "file", file_stamp(ckpt)


def _unknown_model(model: str) -> FDAlignError:
    import open_clip

    names = open_clip.list_models() + list(builtin_models())
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(model.lower(), list(lower), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(lower[c] for c in close)}?" if close else ""
    return FDAlignError(
        f'unknown model {model!r}.{hint} See all names with: python -c "import open_clip; '
        'print(open_clip.list_models())"; for a Hugging Face model use hf:<repo id or directory>; '
        "for your own architecture pass --model-config /path/to/config.json"
    )


def _tag_list(model: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model)
    return ", ".join(tags) if tags else "(none: this architecture has no released weights)"


def _uses_hub(cfg: dict) -> bool:
    """open_clip fetches from the Hub when it has an ``hf_hub`` entry and huggingface_hub is installed."""
    import open_clip.pretrained as oc_pretrained

    return bool(cfg.get("hf_hub")) and oc_pretrained.has_hf_hub()


def _cached_weights(cfg: dict) -> str | None:
    """The tag's checkpoint if it is already in the local cache (the files open_clip would fetch), else None."""
    import open_clip.pretrained as oc_pretrained

    if _uses_hub(cfg):
        from huggingface_hub import try_to_load_from_cache  # a pure look-up: no request, not even for headers

        model_id, filename = os.path.split(cfg["hf_hub"])
        filename = filename or oc_pretrained.HF_WEIGHTS_NAME
        for name in [*oc_pretrained._get_safe_alternatives(filename), filename]:
            found = try_to_load_from_cache(repo_id=model_id, filename=name)
            if isinstance(found, str):
                return found
        return None
    url = cfg.get("url") or ""
    target = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
    return target if url and os.path.isfile(target) else None


def _offline_reason(cfg: dict) -> str | None:
    """Why a download of the tag cannot work (an offline switch, or its host does not answer), or None."""
    from fdalign.backends.hub import host_reachable, hub_endpoint, offline_switch

    if _uses_hub(cfg):
        switch = offline_switch()
        if switch:
            return f"{switch} is set"
        url = hub_endpoint()
    else:
        url = cfg.get("url") or ""
    if url and not host_reachable(url):
        return f"no network connection to {url}"
    return None


def _download_error(name: str, tag: str, cfg: dict, e: BaseException | str) -> FDAlignError:
    where = cfg.get("hf_hub") or cfg.get("url") or "the open_clip download location"
    why = e if isinstance(e, str) else _short(e)
    return FDAlignError(
        f"could not download the weights for {name} (pretrained={tag}) from {where}: {why}. "
        f"Without network access, download them on a machine that has it (e.g. "
        f"open_clip.create_model('{name}', pretrained='{tag}') fills the cache) and pass "
        "--pretrained /path/to/checkpoint"
    )


def _resolve(model: str | None, pretrained: str | None, model_config: str | Path | None) -> _Source:
    import open_clip
    import open_clip.pretrained as oc_pretrained

    if model_config is not None:
        if model and model.startswith(_SCHEMES):
            raise FDAlignError(f"--model-config cannot be combined with {model}: pick one source for the architecture")
        cfg_path = Path(model_config).expanduser()
        model_cfg, preprocess = read_model_config(cfg_path)
        name = model or cfg_path.stem
        weights, kind, wstamp = _weights_for_config(name, pretrained, cfg_path)
        stamp = ["config", name, model_cfg, preprocess, wstamp]
        return _Source(_register_config(name, model_cfg), name, weights, kind, preprocess, stamp, weights or RANDOM)

    assert model
    if model.startswith(_SCHEMES):
        if pretrained is not None:
            raise FDAlignError(
                f"--pretrained is not used with {model}: the weights come from that location; drop --pretrained"
            )
        scheme, ident = model.split(":", 1)
        if scheme == "local-dir":
            d = Path(ident).expanduser()
            if not d.is_dir():
                raise FDAlignError(f"directory not found for {model}: {d}")
            stamp = ["local-dir", _dir_stamp(d)]
        else:
            stamp = ["hf-hub", ident]
        return _Source(model, model, None, "schema", {}, stamp)

    builtins = builtin_models()
    if model in builtins:
        cfg_path = builtins[model]
        model_cfg, preprocess = read_model_config(cfg_path)
        if pretrained is None:  # the shipped weights
            weights, label = str(cfg_path.with_suffix(".safetensors")), None
            kind, wstamp = "file", file_stamp(weights)
        else:
            weights, kind, wstamp = _weights_for_config(model, pretrained, cfg_path)
            label = weights or RANDOM
        stamp = ["builtin", model, model_cfg, preprocess, wstamp]
        return _Source(_register_config(model, model_cfg), model, weights, kind, preprocess, stamp, label)
    if model.startswith(BUILTIN_PREFIX):
        close = difflib.get_close_matches(model, list(builtins), n=1, cutoff=0.6)
        if close:  # a typo of an installed built-in, not a missing install
            raise FDAlignError(
                f"unknown model {model!r}; did you mean {close[0]!r}? (built-in models: {', '.join(builtins)})"
            )
        d = assets_dir()
        raise FDAlignError(
            f"built-in model {model!r} is not installed: expected {d / (model + '.json')} and "
            f"{d / (model + '.safetensors')} (set ${ASSETS_ENV} to a folder holding them, or reinstall fdalign)"
        )

    key = model.replace("/", "-")  # open_clip accepts ViT-B/32 for ViT-B-32
    if key not in open_clip.list_models():
        raise _unknown_model(model)
    if pretrained is None:
        raise FDAlignError(
            f"{model} needs --pretrained: a tag ({_tag_list(key)}), a checkpoint file, "
            f"or '{RANDOM}' for an untrained model"
        )
    if pretrained == RANDOM:
        return _Source(key, model, None, "random", {}, ["open_clip", key, RANDOM], RANDOM)
    tag_cfg = oc_pretrained.get_pretrained_cfg(key, pretrained)
    if tag_cfg:
        reason = None if _cached_weights(tag_cfg) else _offline_reason(tag_cfg)
        if reason:  # fail at once: without network the download would retry for about a minute
            raise _download_error(key, pretrained, tag_cfg, reason)
        try:
            oc_pretrained.download_pretrained(tag_cfg)  # cached after the first time
        except Exception as e:  # hf_hub / urllib raise many types; all mean "could not fetch"
            raise _download_error(key, pretrained, tag_cfg, e) from None
        tag_stamp = {k: v for k, v in tag_cfg.items() if k != "file"}
        return _Source(key, model, pretrained, "tag", {}, ["open_clip", key, pretrained, tag_stamp], pretrained)
    p = Path(pretrained).expanduser()
    if p.is_file():
        return _Source(key, model, str(p), "file", {}, ["open_clip", key, file_stamp(p)], str(p))
    if _looks_like_path(pretrained):
        raise FDAlignError(f"checkpoint file not found: {p}")
    raise FDAlignError(
        f"unknown pretrained tag {pretrained!r} for {key}; valid tags: {_tag_list(key)} "
        "(or pass a checkpoint file path)"
    )


# ----------------------------------------------------------------------------------------------
# The backend


def image_spec_from_visual(visual: nn.Module) -> ImageSpec:
    """Read open_clip's preprocessing config off ``model.visual`` (size, mean, std, interpolation)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    cfg = getattr(visual, "preprocess_cfg", None) or {}
    size = cfg.get("size", getattr(visual, "image_size", 224))
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise FDAlignError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in _INTERPOLATIONS:  # e.g. open_clip's "random" train-time option
        interpolation = "bicubic"
    return ImageSpec(
        size=int(size),
        mean=tuple(float(x) for x in cfg.get("mean", OPENAI_DATASET_MEAN)),
        std=tuple(float(x) for x in cfg.get("std", OPENAI_DATASET_STD)),
        interpolation=interpolation,
    )


class OpenCLIPTextTower(nn.Module):
    """An open_clip model's text side as one module: every child and direct parameter of the model but the
    image tower and the logit scale (shared, not copied), ``forward`` = ``model.encode_text``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        skip = {"visual", "logit_scale", "logit_bias"}
        for name, child in model.named_children():
            if name not in skip:
                self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            if name not in skip:
                self.register_parameter(name, p)
        self.__dict__["_model"] = model  # for forward only: its image tower must not join this state

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._model.encode_text(tokens)


class OpenCLIPBackend(CLIPBackend):
    """An open_clip ``CLIP`` / ``CustomTextCLIP``; the image tower is ``model.visual``.

    Attributes (besides :class:`CLIPBackend`'s): ``model`` (the open_clip model), ``tokenizer``,
    ``model_name`` and ``pretrained`` (what was loaded: a tag, a checkpoint path, ``"random"``,
    or ``None`` for built-ins and ``hf-hub:``/``local-dir:`` sources), ``model_cfg`` (the open_clip
    architecture config it was built from, for :mod:`fdalign.exporting`; None if unknown).
    """

    def __init__(self, model: nn.Module, tokenizer, *, model_name: str, pretrained: str | None, fingerprint: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self.name = model_name if pretrained is None else f"{model_name} ({pretrained})"
        self.fingerprint = fingerprint
        self.model_cfg: dict | None = None
        # Only the image tower is ever trained; freezing the rest here means an optimiser built from
        # model.parameters() by mistake still cannot move the text tower or logit_scale.
        self.model.requires_grad_(False)
        self.model.visual.requires_grad_(True)
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.image_spec = image_spec_from_visual(model.visual)
        dim = getattr(model.visual, "output_dim", None)
        self.embed_dim = int(dim) if dim else int(self.encode_text([""]).shape[1])

    @classmethod
    def load(
        cls,
        model: str | None,
        pretrained: str | None = None,
        model_config: str | Path | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> OpenCLIPBackend:
        import open_clip

        src = _resolve(model, pretrained, model_config)
        try:
            net = open_clip.create_model(
                src.key,
                pretrained=src.weights,
                precision=precision,
                device="cpu",
                force_preprocess_cfg=src.preprocess or None,
                pretrained_text=False,  # never fetch a text backbone behind the user's back
            )
        except FDAlignError:
            raise
        except Exception as e:
            if src.kind == "file":
                raise FDAlignError(
                    f"could not load weights from {src.weights} into {src.name}: {_short(e)}. "
                    "Check that the checkpoint was saved from this architecture (--model / --model-config)"
                ) from None
            if src.kind == "schema":
                raise FDAlignError(
                    f"could not load {src.name}: {_short(e)}. Without network access, download the "
                    "repository elsewhere and pass local-dir:/path/to/it"
                ) from None
            raise FDAlignError(f"could not build {src.name}: {_short(e)}") from None
        try:
            tokenizer = open_clip.get_tokenizer(src.key)
        except Exception as e:
            raise FDAlignError(
                f"could not load the tokenizer for {src.name}: {_short(e)}. Without network access, "
                "fetch it once on a machine that has it (it is cached by huggingface_hub)"
            ) from None
        stamp = src.stamp + [precision]
        if src.kind == "random":
            stamp.append(_state_digest(net))
        backend = cls(net, tokenizer, model_name=src.name, pretrained=src.label, fingerprint=_digest(stamp))
        backend.model_cfg = open_clip.get_model_config(src.key)  # a copy; hf-hub configs are cached by now
        return backend.to(device)

    @property
    def image_encoder(self) -> nn.Module:
        return self.model.visual

    def encode_text(self, texts: Sequence[str], batch_size: int = 256, progress: bool = False) -> torch.Tensor:
        from tqdm.auto import tqdm

        texts = list(texts)
        out = []
        dev = self.device
        starts = range(0, len(texts), batch_size)
        with torch.no_grad():
            for i in tqdm(starts, desc="encode text", disable=not progress, unit="batch"):
                tokens = self.tokenizer(texts[i : i + batch_size]).to(dev)
                out.append(self.model.encode_text(tokens).float().cpu())
        if not out:
            return torch.empty(0, getattr(self, "embed_dim", 0))
        return torch.cat(out)

    @property
    def text_tower(self) -> nn.Module:
        if getattr(self, "_text_tower", None) is None:
            self._text_tower = OpenCLIPTextTower(self.model)
        return self._text_tower

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).long()

    def to(self, device: torch.device | str) -> OpenCLIPBackend:
        self.model.to(device)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> bool:
        from open_clip.modified_resnet import ModifiedResNet

        visual = self.model.visual
        if isinstance(visual, ModifiedResNet) or not hasattr(visual, "set_grad_checkpointing"):
            return False  # open_clip's ResNet accepts the call but ignores it
        trunk = getattr(visual, "trunk", None)  # timm towers: open_clip swallows the failure
        if trunk is not None and not hasattr(trunk, "set_grad_checkpointing"):
            return False
        visual.set_grad_checkpointing(enable)
        return True


register_backend("open_clip")(OpenCLIPBackend)
