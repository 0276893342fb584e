"""Class and spurious prototypes from one ``[C, M, D]`` tensor of prompt features.

Both kinds of prototype are means of the same L2-normalised text features ``g0(P_j(y_c))``:
over templates for a class prototype, over classes for a spurious (template) prototype. So every
prompt is encoded exactly once, in one batched pass, and the result is cached on disk keyed by the
model fingerprint, the templates and the class names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fdalign.errors import FDAlignError
from fdalign.io import atomic_save_safetensors, read_safetensors
from fdalign.prompts import format_prompts
from fdalign.spc import SPCConfig, correct_spurious_prototypes

# Above this many prompts a progress bar is worth showing (openai80 x 25 classes is 2000).
PROGRESS_THRESHOLD = 2000
# Bump when the cached content changes meaning, so old caches are ignored rather than misread.
CACHE_VERSION = "fdalign-prompt-features/1"
PROTOTYPES_FORMAT = "fdalign-prototypes/1"


def default_cache_dir() -> Path:
    """``$FDALIGN_CACHE/prompt_features``, else ``~/.cache/fdalign/prompt_features``."""
    root = os.environ.get("FDALIGN_CACHE") or os.path.join("~", ".cache", "fdalign")
    return Path(root).expanduser() / "prompt_features"


def prompt_cache_key(fingerprint: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 over everything the features depend on."""
    payload = json.dumps(
        {"version": CACHE_VERSION, "model": fingerprint, "templates": list(templates), "classes": list(classnames)},
        ensure_ascii=False,
    )
    # surrogatepass: a class folder named with non-UTF-8 bytes reaches here as lone surrogates (os.fsdecode)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


def encode_prompt_features(
    backend,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
    progress: bool | None = None,
    cache_dir: str | Path | bool | None = None,
) -> torch.Tensor:
    """Encode every ``template x class`` prompt once.

    Args:
        backend: a :class:`~fdalign.backends.base.CLIPBackend` (only ``encode_text`` and
            ``fingerprint`` are used).
        classnames: ``C`` class names; templates: ``M`` templates, each with one ``{}``.
        batch_size: prompts per text-encoder forward pass.
        progress: show a progress bar; ``None`` = only when ``C * M > PROGRESS_THRESHOLD``.
        cache_dir: directory of the on-disk cache; ``None`` = :func:`default_cache_dir`,
            ``False`` = no cache.

    Returns:
        ``[C, M, D]`` float32, each ``[c, j]`` vector L2-normalised.
    """
    c, m = len(classnames), len(templates)
    if c == 0 or m == 0:
        raise FDAlignError(f"need at least one class and one template (got {c} classes, {m} templates)")

    cache_path = None
    if cache_dir is not False:
        root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir).expanduser()
        key = prompt_cache_key(backend.fingerprint, classnames, templates)
        cache_path = root / f"{key}.safetensors"
        cached = _read_cached(cache_path, c, m, key)
        if cached is not None:
            return cached

    if progress is None:
        progress = c * m > PROGRESS_THRESHOLD
    prompts = format_prompts(classnames, templates)
    feats = backend.encode_text(prompts, batch_size=batch_size, progress=progress)
    if feats.shape[0] != c * m:
        raise RuntimeError(f"backend returned {feats.shape[0]} features for {c * m} prompts")
    feats = F.normalize(feats.detach().to("cpu", torch.float32), dim=-1).reshape(c, m, -1)

    if cache_path is not None:
        try:
            # the key goes inside the file (under its content hash): an entry copied over another is a miss
            atomic_save_safetensors(cache_path, {"features": feats}, {"format": CACHE_VERSION, "key": key})
        except OSError as e:  # a read-only cache must not stop the user; they just pay the re-encode
            import warnings

            warnings.warn(f"could not write prompt-feature cache {cache_path}: {e}", stacklevel=2)
    return feats


def _read_cached(path: Path, c: int, m: int, key: str) -> torch.Tensor | None:
    if not path.is_file():
        return None
    import warnings

    try:  # the content hash is required: a damaged or foreign entry is recomputed and rewritten
        tensors, meta = read_safetensors(path, "prompt-feature cache file", require_hash=True, fix="recomputing it")
        feats = tensors["features"]
    except Exception as e:
        msg = str(e) if isinstance(e, FDAlignError) else f"prompt-feature cache file {path} is unreadable ({e})"
        warnings.warn(msg if msg.endswith("recomputing it") else f"{msg}; recomputing it", stacklevel=3)
        return None
    if meta.get("key") != key:  # another class set's (or model's, or templates') entry under this name
        warnings.warn(
            f"ignoring prompt-feature cache file {path}: it was written for key {meta.get('key') or '(none)'}, "
            "not for its own name's (another entry copied over it, or an older fdalign); recomputing it",
            stacklevel=3,
        )
        return None
    if feats.ndim != 3 or feats.shape[:2] != (c, m) or not torch.isfinite(feats).all():
        warnings.warn(
            f"ignoring prompt-feature cache file {path}: shape {tuple(feats.shape)} or values do not fit "
            f"[{c}, {m}, D] finite features; recomputing it",
            stacklevel=3,
        )
        return None
    return feats.float()


def class_prototypes(features: torch.Tensor) -> torch.Tensor:
    """``[C, M, D]`` -> ``[C, D]``: per class, the renormalised mean over templates of the normalised features."""
    return F.normalize(F.normalize(features, dim=-1).mean(dim=1), dim=-1)


def spurious_prototypes(features: torch.Tensor) -> torch.Tensor:
    """``[C, M, D]`` -> ``[M, D]``: per template, the renormalised mean over classes of the normalised features."""
    return F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1)


SPURIOUS_KINDS = ("real", "shuffled", "random")


def shuffled_spurious_prototypes(features: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """FD-Align's ablation: ``[C, M, D]`` -> ``[M, D]`` prototypes from templates with the class names permuted
    across templates.

    Each class gets its own random permutation ``pi_c`` of the templates, and prototype ``j`` is the renormalised
    mean over classes of ``features[c, pi_c(j)]``: the same prompt features and the same count as
    :func:`spurious_prototypes`, but a prototype no longer stands for one way of phrasing (one nuisance).
    With one class there is nothing to mix, so the prototypes are the real ones, reordered.
    """
    c, m, _ = features.shape
    g = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(m, generator=g) for _ in range(c)])  # [C, M]: one per class
    mixed = features[torch.arange(c)[:, None], perms]  # mixed[c, j] = features[c, perms[c, j]]
    return spurious_prototypes(mixed)


def random_spurious_prototypes(count: int, dim: int, seed: int = 0) -> torch.Tensor:
    """FD-Align's ablation: ``[count, dim]`` random unit vectors (Gaussian directions), seeded."""
    g = torch.Generator().manual_seed(int(seed))
    return F.normalize(torch.randn(count, dim, generator=g), dim=-1)


@dataclasses.dataclass
class Prototypes:
    """Everything FD-Align needs from the text side.

    Attributes:
        class_prototypes: ``[C, D]`` float32, L2-normalised.
        spurious_prototypes: ``[M, D]`` float32, L2-normalised, one per template.
        corrected_prototypes: ``[k, D]`` after SPC, or None when SPC was not run.
        templates: the ``M`` templates, in the order of ``spurious_prototypes``.
        kept_templates / dropped_templates: SPC's split of ``templates`` (all kept without SPC).
        classnames: the ``C`` class names, in the order of ``class_prototypes``.
        fingerprint: the backend fingerprint the features came from.
        spc: the SPC settings used, or None.
    """

    class_prototypes: torch.Tensor
    spurious_prototypes: torch.Tensor
    corrected_prototypes: torch.Tensor | None
    templates: list[str]
    kept_templates: list[str]
    dropped_templates: list[str]
    classnames: list[str] = dataclasses.field(default_factory=list)
    fingerprint: str = ""
    spc: SPCConfig | None = None

    @property
    def loss_prototypes(self) -> torch.Tensor:
        """The prototypes the spurious loss uses: corrected if SPC ran, else one per template."""
        return self.corrected_prototypes if self.corrected_prototypes is not None else self.spurious_prototypes


_DEFAULT_SPC = SPCConfig()


def build_prototypes(
    backend,
    classnames: Sequence[str],
    templates: Sequence[str],
    spc: SPCConfig | None = _DEFAULT_SPC,
    cache_dir: str | Path | bool | None = None,
    progress: bool | None = None,
    batch_size: int = 256,
    spurious_kind: str = "real",
    spurious_seed: int = 0,
) -> Prototypes:
    """Encode the prompts once and derive class, spurious and (if ``spc``) corrected prototypes.

    ``spurious_kind`` (an ablation of FD-Align, issue 27): ``real`` (the paper's), ``shuffled``
    (:func:`shuffled_spurious_prototypes`) or ``random`` (:func:`random_spurious_prototypes`, one per
    template), seeded with ``spurious_seed``; SPC then runs on them as on the real ones.
    """
    if spurious_kind not in SPURIOUS_KINDS:
        raise FDAlignError(f"spurious prototypes {spurious_kind!r}: choose one of {', '.join(SPURIOUS_KINDS)}")
    feats = encode_prompt_features(
        backend, classnames, templates, batch_size=batch_size, progress=progress, cache_dir=cache_dir
    )
    spur = spurious_prototypes(feats)
    if spurious_kind == "shuffled":
        spur = shuffled_spurious_prototypes(feats, spurious_seed)
    elif spurious_kind == "random":
        spur = random_spurious_prototypes(spur.shape[0], spur.shape[1], spurious_seed)
    corrected, kept, dropped = None, list(templates), []
    if spc is not None:
        res = correct_spurious_prototypes(spur, spc)
        corrected = res.prototypes
        kept = [templates[i] for i in res.kept]
        dropped = [templates[i] for i in res.dropped]
    return Prototypes(
        class_prototypes=class_prototypes(feats),
        spurious_prototypes=spur,
        corrected_prototypes=corrected,
        templates=list(templates),
        kept_templates=kept,
        dropped_templates=dropped,
        classnames=list(classnames),
        fingerprint=str(getattr(backend, "fingerprint", "")),
        spc=None if spc is None else dataclasses.replace(spc),  # a copy: the default is shared
    )


def text_state_prototypes(backend, state: dict, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[C, D]`` class prototypes as the backend's text tower would give them holding ``state`` (a trained or
    interpolated text tower: FLYP, CLIP-LoRA and their WiSE-FT); the tower's own weights are put back after."""
    tower = backend.text_tower
    saved = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    tower.load_state_dict(state)
    try:
        feats = encode_prompt_features(backend, classnames, templates, cache_dir=False, progress=False)
    finally:
        tower.load_state_dict(saved)
    return class_prototypes(feats)


def save_prototypes(path: str | Path, protos: Prototypes) -> Path:
    """Write ``protos`` as safetensors (atomic); lists and settings go in the metadata as JSON."""
    path = Path(path).expanduser()
    tensors = {
        "class_prototypes": protos.class_prototypes.float().cpu(),
        "spurious_prototypes": protos.spurious_prototypes.float().cpu(),
    }
    if protos.corrected_prototypes is not None:
        tensors["corrected_prototypes"] = protos.corrected_prototypes.float().cpu()
    spc = None if protos.spc is None else dataclasses.asdict(protos.spc)
    metadata = {
        "format": PROTOTYPES_FORMAT,
        "templates": json.dumps(protos.templates, ensure_ascii=False),
        "kept_templates": json.dumps(protos.kept_templates, ensure_ascii=False),
        "dropped_templates": json.dumps(protos.dropped_templates, ensure_ascii=False),
        "classnames": json.dumps(protos.classnames, ensure_ascii=False),
        "fingerprint": protos.fingerprint,
        "spc": json.dumps(spc),
    }
    atomic_save_safetensors(path, tensors, metadata)
    return path


def load_prototypes(path: str | Path) -> Prototypes:
    """Read a file written by :func:`save_prototypes`."""

    path = Path(path).expanduser()
    if not path.is_file():
        raise FDAlignError(
            f"prototypes file {path} does not exist; create it with `fdalign prototypes ... --out {path}`"
        )
    tensors, meta = read_safetensors(path, "prototypes file")
    if meta.get("format") != PROTOTYPES_FORMAT or not {"class_prototypes", "spurious_prototypes"} <= tensors.keys():
        raise FDAlignError(
            f"{path} is not an fdalign prototypes file (format {meta.get('format')!r}); "
            "recreate it with `fdalign prototypes`"
        )
    spc = json.loads(meta.get("spc", "null"))
    return Prototypes(
        class_prototypes=tensors["class_prototypes"],
        spurious_prototypes=tensors["spurious_prototypes"],
        corrected_prototypes=tensors.get("corrected_prototypes"),
        templates=json.loads(meta["templates"]),
        kept_templates=json.loads(meta["kept_templates"]),
        dropped_templates=json.loads(meta["dropped_templates"]),
        classnames=json.loads(meta.get("classnames", "[]")),
        fingerprint=meta.get("fingerprint", ""),
        spc=None if spc is None else SPCConfig(**spc),
    )
