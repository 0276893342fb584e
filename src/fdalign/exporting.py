"""Export a finished run as a full CLIP checkpoint that plain open_clip or transformers loads.

The run's fine-tuned (or WiSE-FT-mixed) image tower is put back into the base CLIP, whose text
tower and logit scale stay as they were, and the whole model is written in its backend's own format
into one folder ``OUT``::

    OUT/open_clip_model.safetensors  + open_clip_config.json   (--format open_clip), or
    OUT/model.safetensors + config.json + tokenizer / preprocessor files  (--format hf)
    OUT/fdalign_head.safetensors     the classifier: weight [C, D], bias [C], class names
    OUT/README.md                    the model card (base model, data hashes, method, selection, metrics)
    OUT/fdalign_export.json          what was exported from which run (read by ``fdalign predict``)
    OUT/adapter/                     with ``--adapter-only``, a LoRA run's adapter in peft's own format
                                     (``save_pretrained``: adapter_config.json + adapter_model.safetensors)

A LoRA run's model file already holds the merged weights, so the checkpoint is a plain one: it loads
without peft.

The open_clip folder follows open_clip's own ``local-dir:`` / Hub layout, so
``open_clip.create_model_and_transforms("local-dir:OUT")`` rebuilds any architecture (a custom
``--model-config`` one included) with its preprocessing; the safetensors file alone also loads with
``create_model_and_transforms(name, pretrained=file)`` or ``open_clip.load_checkpoint``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fdalign.errors import FDAlignError

FORMATS = ("open_clip", "hf")
EXPORT_FORMAT = "fdalign-export/1"
HEAD_FORMAT = "fdalign-head/1"
MANIFEST_FILE = "fdalign_export.json"
HEAD_FILE = "fdalign_head.safetensors"
CARD_FILE = "README.md"
OPENCLIP_WEIGHTS = "open_clip_model.safetensors"
OPENCLIP_CONFIG = "open_clip_config.json"
HF_WEIGHTS = "model.safetensors"
SELECTED = "selected"
ADAPTER_DIR = "adapter"
VERIFY_TOLERANCE = 1e-4  # float32 features of the same weights through the same ops differ by ~0
# The settings that define the method and the data, shown in the model card.
CARD_SETTINGS = (
    "model",
    "pretrained",
    "model_config",
    "data",
    "dataset_name",
    "classnames",
    "shots",
    "seed",
    "templates",
    "mode",
    "alpha",
    "beta",
    "kl_direction",
    "spc",
    "spc_keep",
    "spc_k",
    "head",
    "optimizer",
    "lr",
    "epochs",
    "batch_size",
    "selection",
)


# ----------------------------------------------------------------------------------------------
# The run's weights


def finished_run(run_dir: str | os.PathLike) -> Path:
    """``run_dir`` as a Path if training finished there; else an :class:`FDAlignError` saying what to do."""
    from fdalign.train.run import CONFIG_FILE, MODEL_FILE, SELECTION_FILE

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise FDAlignError(
            f"{run_dir} is not an fdalign run directory (no {CONFIG_FILE}); pass the --out of `fdalign train`"
        )
    missing = [f for f in (MODEL_FILE, SELECTION_FILE) if not (run_dir / f).is_file()]
    if missing:
        raise FDAlignError(
            f"run {run_dir} has not finished training (no {' or '.join(missing)}); finish it with "
            f"`fdalign train --config {run_dir / CONFIG_FILE} --resume`, then export"
        )
    return run_dir


def parse_alpha(value: str | float | None) -> float | str | None:
    """``--wiseft-alpha``: None (the fine-tuned weights), ``"selected"``, or a number in [0, 1]."""
    if value is None or value == SELECTED:
        return value
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        raise FDAlignError(f"--wiseft-alpha {value!r} is not a number; give 0..1 or '{SELECTED}'") from None
    if not 0.0 <= alpha <= 1.0:
        raise FDAlignError(f"--wiseft-alpha {alpha:g} is outside [0, 1] (0 = zero-shot, 1 = fine-tuned)")
    return alpha


def resolve_alpha(loaded, alpha: float | str | None) -> float | None:
    """``"selected"`` -> the mixing weight the run chose on val (``selection.json``)."""
    if alpha != SELECTED:
        return alpha
    chosen = (loaded.selection.get("wiseft_alpha") or {}).get("chosen")
    if chosen is None:
        raise FDAlignError(
            f"run {loaded.run_dir} recorded no selected WiSE-FT alpha in selection.json; "
            "pass a number with --wiseft-alpha"
        )
    return float(chosen)


def apply_weights(loaded, alpha: float | None) -> nn.Module:
    """Put the weights to export into ``loaded.backend`` (so its full model holds them); return the head.

    ``alpha=None`` keeps the fine-tuned encoder and head; a number mixes both with the zero-shot
    ones by WiSE-FT (:meth:`fdalign.train.run.LoadedRun.wiseft`).
    """
    if alpha is None:
        return loaded.head
    encoder, head = loaded.wiseft(alpha)
    # the backend's image_encoder is (or wraps) submodules of the full model: loading it updates that
    loaded.backend.image_encoder.load_state_dict(encoder.state_dict())
    return head


# ----------------------------------------------------------------------------------------------
# The classifier head


def head_tensors(head: nn.Module) -> dict[str, torch.Tensor]:
    """Any :class:`~fdalign.heads.PrototypeHead` as ``logits = normalize(f) @ weight.T + bias``.

    Returns ``{"weight": [C, D], "bias": [C]}`` float32; a frozen head's weight is ``scale * prototypes``.
    """
    if head.trainable:
        return {"weight": head.weight.detach().float().cpu(), "bias": head.bias.detach().float().cpu()}
    p = head.prototypes.detach().float().cpu()
    return {"weight": p * head.scale, "bias": torch.zeros(p.shape[0])}


def save_head(path: str | os.PathLike, head: nn.Module, classnames: list[str], logit_scale: float) -> Path:
    """Write the classifier as a small safetensors file with the class names in its metadata."""
    from fdalign.io import atomic_save_safetensors

    t = head_tensors(head)
    if len(classnames) != t["weight"].shape[0]:
        raise FDAlignError(f"the head has {t['weight'].shape[0]} classes but the run records {len(classnames)} names")
    meta = {
        "format": HEAD_FORMAT,
        "classnames": json.dumps(list(classnames), ensure_ascii=False),
        "logits": "normalize(image_features) @ weight.T + bias",
        "trained_as": head.kind,
        "logit_scale": repr(float(logit_scale)),
    }
    return atomic_save_safetensors(Path(path), t, meta)


def load_head(path: str | os.PathLike):
    """``(PrototypeHead, classnames)`` from a :func:`save_head` file; the head computes the same logits."""
    from fdalign.heads import head_from_state_dict
    from fdalign.io import read_safetensors

    tensors, meta = read_safetensors(path, "head file")
    if meta.get("format") != HEAD_FORMAT or set(tensors) != {"weight", "bias"}:
        raise FDAlignError(f"{path} is not an fdalign head file (format {meta.get('format')!r})")
    head = head_from_state_dict(tensors, "trainable", float(meta.get("logit_scale", 1.0)))
    return head.eval().requires_grad_(False), list(json.loads(meta["classnames"]))


# ----------------------------------------------------------------------------------------------
# The two formats


def _write_open_clip(backend, out: Path) -> dict:
    from fdalign.io import atomic_save_safetensors, atomic_write_json

    if getattr(backend, "model_cfg", None) is None:
        raise FDAlignError(f"cannot export {backend.name}: its open_clip architecture config is unknown")
    pp = {k: list(v) if isinstance(v, tuple) else v for k, v in backend.model.visual.preprocess_cfg.items()}
    atomic_write_json(out / OPENCLIP_CONFIG, {"model_cfg": backend.model_cfg, "preprocess_cfg": pp})
    atomic_save_safetensors(out / OPENCLIP_WEIGHTS, backend.model.state_dict())
    return {"weights": OPENCLIP_WEIGHTS, "config": OPENCLIP_CONFIG}


def _image_processor(backend):
    """The run's CLIPImageProcessor, or one built from its ImageSpec when the base model had none."""
    if backend.processor is not None:
        return backend.processor
    from transformers import CLIPImageProcessor

    resample = {"nearest": 0, "bilinear": 2, "bicubic": 3}[backend.image_spec.interpolation]
    s = backend.image_spec.size
    return CLIPImageProcessor(
        size={"shortest_edge": s},
        crop_size={"height": s, "width": s},
        image_mean=list(backend.image_spec.mean),
        image_std=list(backend.image_spec.std),
        resample=resample,
    )


def _write_hf(backend, out: Path) -> dict:
    # save_pretrained writes into the temp folder that atomic_directory renames into place at the end
    backend.model.save_pretrained(out)
    backend.tokenizer.save_pretrained(out)
    _image_processor(backend).save_pretrained(out)
    return {"weights": HF_WEIGHTS, "config": "config.json"}


def _plain_image_features(fmt: str, folder: Path, images: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` image features of the model in ``folder``, loaded by open_clip / transformers alone."""
    if fmt == "open_clip":
        import open_clip

        return open_clip.create_model(f"local-dir:{folder}").eval().encode_image(images)
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    f = model.get_image_features(pixel_values=images)
    return f if isinstance(f, torch.Tensor) else f.pooler_output  # transformers 5 returns an output object


@torch.no_grad()
def verify_export(fmt: str, folder: Path, encoder: nn.Module, image_size: int, n: int = 2) -> float:
    """Max abs difference between ``encoder`` and the exported model on ``n`` random images."""
    images = torch.randn(n, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    want = encoder.eval()(images).float()
    return float((_plain_image_features(fmt, folder, images).float() - want).abs().max())


def _backend_format(backend) -> str:
    from fdalign.backends.hf import HFCLIPBackend
    from fdalign.backends.openclip import OpenCLIPBackend

    if isinstance(backend, OpenCLIPBackend):
        return "open_clip"
    if isinstance(backend, HFCLIPBackend):
        return "hf"
    raise FDAlignError(f"runs on {type(backend).__name__} models cannot be exported")


# ----------------------------------------------------------------------------------------------
# Export


@dataclass
class ExportResult:
    out: Path
    format: str
    weights: Path
    wiseft_alpha: float | None
    manifest: dict


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force``; even then, replace only an earlier export or an empty folder."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise FDAlignError(f"output path {out} already exists; pass --force to replace it or choose another --out")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file()):
        raise FDAlignError(
            f"--force replaces only an earlier fdalign export or an empty folder, and {out} is "
            f"neither (no {MANIFEST_FILE}); choose another --out"
        )


def export_run(
    run_dir: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    wiseft_alpha: float | str | None = None,
    force: bool = False,
    verify: bool = True,
    adapter_only: bool = False,
) -> ExportResult:
    """Write the run's model as ``fmt`` ("open_clip" or "hf") into the folder ``out`` (see the module docstring).

    ``verify`` reloads the written model with plain open_clip / transformers and compares its image
    features with the run's on a random batch before ``out`` is put in place. ``adapter_only``: also write a
    LoRA run's adapter in peft's format to ``out/adapter`` (refused for a run without adapters).
    """
    from fdalign.io import target_lock

    with target_lock(out, "export folder"):  # one writer; a killed export's temp folder is removed
        return _export_run(run_dir, fmt, out, wiseft_alpha, force, verify, adapter_only)


def _export_run(
    run_dir, fmt: str, out, wiseft_alpha, force: bool, verify: bool, adapter_only: bool = False
) -> ExportResult:
    from fdalign.io import atomic_directory, atomic_write_json, atomic_write_text
    from fdalign.train.run import check_model_hash, load_run

    if fmt not in FORMATS:
        raise FDAlignError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    run_dir, out = finished_run(run_dir), Path(out)
    alpha = parse_alpha(wiseft_alpha)
    check_out(out, force)
    check_model_hash(run_dir)
    loaded = load_run(run_dir, "cpu")
    have = _backend_format(loaded.backend)
    if have != fmt:
        raise FDAlignError(
            f"run {run_dir} was trained on the {have} model {loaded.backend.name}; export it with "
            f"--format {have} (converting between open_clip and Hugging Face is not supported)"
        )
    if not loaded.classnames:
        raise FDAlignError(f"{run_dir}: the model file records no class names; re-run `fdalign train`")
    alpha = resolve_alpha(loaded, alpha)
    adapter = _run_adapter(run_dir) if adapter_only else None
    adapter_base = loaded.zero_shot_encoder() if adapter_only else None
    head = apply_weights(loaded, alpha)
    manifest = _manifest(loaded, fmt, alpha)
    with atomic_directory(out, replace=force) as tmp:
        manifest["files"] = (_write_open_clip if fmt == "open_clip" else _write_hf)(loaded.backend, tmp)
        manifest["files"].update(head=HEAD_FILE, card=CARD_FILE)
        if adapter is not None:
            write_peft_adapter(adapter_base, adapter, loaded.metadata["trainable"], alpha, tmp / ADAPTER_DIR)
            manifest["files"]["adapter"] = ADAPTER_DIR
        if verify:
            diff = verify_export(fmt, tmp, loaded.backend.image_encoder, loaded.backend.image_spec.size)
            if not diff <= VERIFY_TOLERANCE:  # also catches NaN
                raise FDAlignError(
                    f"the exported {fmt} model does not reproduce the run's image features (max abs "
                    f"difference {diff:.3g} > {VERIFY_TOLERANCE:g}); nothing was written to {out}"
                )
            manifest["verified_max_abs_diff"] = diff
        save_head(tmp / HEAD_FILE, head, loaded.classnames, loaded.backend.logit_scale)
        atomic_write_text(tmp / CARD_FILE, model_card(loaded, manifest, out))
        atomic_write_json(tmp / MANIFEST_FILE, manifest)
    return ExportResult(out, fmt, out / manifest["files"]["weights"], alpha, manifest)


def _run_adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from fdalign.train.run import MODEL_FILE, load_model

    adapter = load_model(run_dir / MODEL_FILE).adapter
    if not adapter:
        raise FDAlignError(f"run {run_dir} has no LoRA adapter (trained without --trainable lora); drop --adapter-only")
    return adapter


def write_peft_adapter(base: nn.Module, adapter: dict, trainable: dict, alpha: float | None, out: Path) -> Path:
    """The run's adapter on ``base`` (the base image tower) written by peft's ``save_pretrained`` into ``out``.

    A WiSE-FT ``alpha`` is exported as ``lora_alpha * alpha``: peft then applies ``alpha`` times the trained
    update, which is the weight interpolation (:func:`fdalign.train.trainable.scale_adapters`).
    """
    from peft import LoraConfig, get_peft_model

    from fdalign.train.trainable import ADAPTER_NAME, lora_target_names

    scale = 1.0 if alpha is None else float(alpha)
    config = LoraConfig(
        r=int(trainable["lora_rank"]),
        lora_alpha=float(trainable["lora_alpha"]) * scale,
        lora_dropout=float(trainable["lora_dropout"]),
        target_modules=lora_target_names(base, trainable["lora_targets"]),
        bias="none",
    )
    model = get_peft_model(base, config, adapter_name=ADAPTER_NAME)
    missing, unexpected = model.base_model.model.load_state_dict(adapter, strict=False)
    lost = [k for k in missing if ".lora_" in k]
    if unexpected or lost:
        raise FDAlignError(f"the run's adapter does not fit its base model: {(unexpected or lost)[:3]}")
    model.save_pretrained(str(out))
    return out


def _manifest(loaded, fmt: str, alpha: float | None) -> dict:
    from fdalign import __version__

    cfg = loaded.config
    return {
        "format": EXPORT_FORMAT,
        "export_format": fmt,
        "fdalign_version": __version__,
        "run": str(loaded.run_dir.resolve()),
        "epoch": loaded.metadata.get("epoch"),
        "weights": "fine-tuned" if alpha is None else f"wiseft-{alpha:g}",
        "wiseft_alpha": alpha,
        "base_model": {
            "model": cfg.model,
            "pretrained": cfg.pretrained,
            "model_config": cfg.model_config,
            "name": loaded.backend.name,
            "fingerprint": loaded.metadata.get("base_fingerprint"),
        },
        "classnames": list(loaded.classnames),
    }


# ----------------------------------------------------------------------------------------------
# The model card


def _load_snippet(fmt: str, out: Path, base_model: dict) -> list[str]:
    # The folder by its own name, not an absolute path: the card must hold wherever the export is
    # copied or published, and must not carry the exporting user's directories.
    out = Path(out.resolve().name)
    if fmt == "hf":
        return [
            "```python",
            f"# run next to the folder {out}, or replace {out} with its path",
            "from transformers import CLIPModel, CLIPProcessor",
            f'model = CLIPModel.from_pretrained("{out}")',
            f'processor = CLIPProcessor.from_pretrained("{out}")',
            "```",
        ]
    lines = [
        "```python",
        f"# run next to the folder {out}, or replace {out} with its path",
        "import open_clip",
        f'model, _, preprocess = open_clip.create_model_and_transforms("local-dir:{out}")',
    ]
    if base_model.get("model_config"):
        cfg = Path(base_model["model_config"]).expanduser().resolve()
        lines += [
            "# or by name, after registering the run's architecture config (open_clip names it by the file stem):",
            f'open_clip.add_model_config("{cfg}")',
            f'model, _, preprocess = open_clip.create_model_and_transforms("{cfg.stem}", '
            f'pretrained="{out / OPENCLIP_WEIGHTS}")',
        ]
    elif base_model.get("model") and not str(base_model["model"]).startswith(("hf-hub:", "local-dir:", "fdalign-")):
        lines += [
            "# or by architecture name (the preprocessing is then open_clip's default for that name):",
            f'model, _, preprocess = open_clip.create_model_and_transforms("{base_model["model"]}", '
            f'pretrained="{out / OPENCLIP_WEIGHTS}")',
        ]
    return lines + ["```"]


def model_card(loaded, manifest: dict, out: Path) -> str:
    """``README.md`` of an export: what the weights are, how to load them, and the run's report."""
    cfg = loaded.config.to_dict()
    base, alpha = manifest["base_model"], manifest["wiseft_alpha"]
    weights = (
        f"the fine-tuned weights of epoch {manifest['epoch']}"
        if alpha is None
        else f"WiSE-FT: (1 - {alpha:g}) x zero-shot + {alpha:g} x fine-tuned (epoch {manifest['epoch']}), "
        "image encoder and head alike"
    )
    names = manifest["classnames"]
    if alpha == 0.0:  # WiSE-FT's zero end: none of the fine-tuning is in these weights
        weights = f"zero-shot CLIP: WiSE-FT alpha 0 keeps none of the fine-tuning (epoch {manifest['epoch']})"
    title = (
        f"# {loaded.run_dir.name}: zero-shot CLIP (WiSE-FT alpha 0), not fine-tuned"
        if alpha == 0.0
        else f"# {loaded.run_dir.name}: CLIP fine-tuned with fdalign"
    )
    lines = [
        title,
        "",
        f"The image encoder of **{base['name']}** fine-tuned on {cfg.get('dataset_name') or cfg.get('data')} "
        f"({len(names)} classes, {cfg.get('shots')} shots per class, seed {cfg.get('seed')}) with "
        f"{'FD-Align' if cfg.get('mode') != 'linear-probe' else 'a linear probe'} "
        f"(alpha {cfg.get('alpha')}, beta {cfg.get('beta')}, SPC {'on' if cfg.get('spc') else 'off'}). "
        "The text tower and the logit scale are the base model's, unchanged."
        + (
            " **This export is WiSE-FT alpha 0: the base model's own image encoder with the zero-shot "
            "classifier; none of that fine-tuning is in it.**"
            if alpha == 0.0
            else ""
        ),
        "",
        f"- **weights**: {weights}",
        "- **base model**: "
        + ", ".join(
            f"{k.replace('_', ' ')} `{base[k]}`"
            for k in ("model", "pretrained", "model_config", "fingerprint")
            if base.get(k)
        ),
        f"- **run**: `{manifest['run']}`; fdalign {manifest['fdalign_version']}",
        f"- **classes** ({len(names)}): {', '.join(names[:50])}{', ...' if len(names) > 50 else ''}",
        "",
        "## Loading",
        "",
        *_load_snippet(manifest["export_format"], out, base),
        "",
        f"`{HEAD_FILE}` is the classifier: `logits = normalize(image_features) @ weight.T + bias`, "
        "class names in its metadata (`classnames`). `fdalign predict "
        f"{out} IMAGES... --out preds.csv` classifies images with it.",
        "",
    ]
    return "\n".join(lines + _card_report(loaded, cfg, alpha)).rstrip() + "\n"


def metrics_row(alpha: float | None) -> str:
    """The row of the run's metrics that a given export reproduces (alpha 0 and 1 are the end points)."""
    if alpha is None or alpha == 1.0:
        return "fine-tuned"
    return "zero-shot" if alpha == 0.0 else f"wiseft-{alpha:g}"


def _card_report(loaded, cfg: dict, alpha: float | None) -> list[str]:
    """The run's own evaluation (metrics, what was selected on what, data hashes, settings), nested."""
    from fdalign.eval import render_report
    from fdalign.io import read_json
    from fdalign.train.run import HASHES_FILE

    metrics_path = loaded.run_dir / "metrics.json"
    if not metrics_path.is_file():
        return [f"The run has no metrics.json; evaluate it with `fdalign eval {loaded.run_dir}`."]
    doc = read_json(metrics_path, "metrics file")
    row = metrics_row(alpha)
    evaluated = any(row in per_set for per_set in doc.get("metrics", {}).values())
    hashes_path = loaded.run_dir / HASHES_FILE
    hashes = read_json(hashes_path, "hashes file") if hashes_path.is_file() else doc.get("hashes")
    settings = {k: cfg[k] for k in CARD_SETTINGS if k in cfg}
    report = render_report(
        doc["metrics"],
        selection=doc.get("selection") or loaded.selection,
        config=settings,
        hashes=hashes,
        roles=doc.get("roles"),
        title="Evaluation of the run",
    )
    return [
        f"In the table below this export is the row **{row}**."
        if evaluated
        else f"The run did not evaluate these weights ({row}); the table shows the rows it did.",
        "",
        re.sub(r"^(#+) ", r"#\1 ", report, flags=re.M),  # its sections nest under the card's
    ]


__all__ = [
    "FORMATS",
    "export_run",
    "ExportResult",
    "save_head",
    "load_head",
    "head_tensors",
    "finished_run",
    "parse_alpha",
    "resolve_alpha",
    "apply_weights",
    "model_card",
    "metrics_row",
    "MANIFEST_FILE",
    "HEAD_FILE",
]
