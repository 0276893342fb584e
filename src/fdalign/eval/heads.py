"""Cache-model heads (Tip-Adapter, Tip-Adapter-F, APE, APE-T) evaluated on one or several encoders.

The paper's "plug the FD-Align encoder in" table: every head is fitted on zero-shot CLIP's features
and again on a fine-tuned encoder's, and the rows read "Tip", "Tip + FD-Align", ... For each encoder
the K-shot cache split and the val split are encoded once, every head is fitted from those features
(hyper-parameters searched on val only, through :mod:`fdalign.selection`), and then
:func:`fdalign.eval.run_evaluation` encodes each test / OOD set once per encoder for all heads.
``--heads-preset authors`` swaps the defaults for the authors' settings (:mod:`fdalign.eval.heads_presets`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from fdalign.errors import FDAlignError
from fdalign.eval import featcache
from fdalign.eval.features import extract_features
from fdalign.eval.pipeline import EvalSet, run_evaluation
from fdalign.heads import PrototypeHead
from fdalign.heads.ape import APEConfig, fit_ape, fit_ape_t
from fdalign.heads.cache import DEFAULT_CHUNK, FitConfig, feature_split
from fdalign.heads.tip import TipConfig, fit_tip, fit_tip_f
from fdalign.selection import SelectionLog

HEAD_NAMES = ("zeroshot", "tip", "tip-f", "ape", "ape-t")
DISPLAY = {"zeroshot": "Zero-shot", "tip": "Tip", "tip-f": "Tip-F", "ape": "APE", "ape-t": "APE-T"}


@dataclass
class HeadsConfig:
    """Grids and training of the cache heads; ``chunk`` = test rows per affinity slice ``[chunk, N]``."""

    tip: TipConfig = field(default_factory=TipConfig)
    ape: APEConfig = field(default_factory=APEConfig)
    chunk: int = DEFAULT_CHUNK
    # augmented views of each cache image (random crop + flip), averaged into the keys and read one
    # per epoch by Tip-F / APE-T; Tip-Adapter uses 10. 0: the cache is its evaluation-transform encoding
    views: int = 0
    view_seed: int = 0
    # True: Tip-F / APE-T train on a fresh augmented encoding of the cache every epoch (as the authors
    # do) instead of cycling over the cache's views
    fresh_views: bool = False
    # the zero-shot logits' scale: None = the model's; the authors use the constant 100
    logit_scale: float | None = None
    preset: str = "defaults"  # where the settings come from, for the report (set by for_preset)

    @classmethod
    def from_dict(cls, d: dict, source: str = "heads config") -> HeadsConfig:
        """Nested ``{"tip": {...,"fit": {...}}, "ape": {...}, "chunk": n}``; unknown keys are an error."""
        cfg = _build(cls, d or {}, source, "")
        cfg.check(source)
        return cfg

    def check(self, source: str = "heads config") -> None:
        """Raise :class:`FDAlignError` naming the field for a value no head can use."""
        from fdalign.heads.cache import grid_values

        def bad(field_name, value, want):
            raise FDAlignError(f"{source}: field '{field_name}' is {value!r}; it must be {want}")

        for name, sub in (("tip", self.tip), ("ape", self.ape)):
            for g in ("alpha", "beta") + (("gamma", "channels") if name == "ape" else ()):
                grid_values(getattr(sub, g), f"{name}.{g}")
            for k in ("init_alpha", "init_beta"):
                v = getattr(sub, k)
                if not (v is None and name == "tip") and (not isinstance(v, (int, float)) or v < 0):
                    bad(
                        f"{name}.{k}", v, "a number >= 0" + (" or null (Tip's searched value)" if name == "tip" else "")
                    )
            f = sub.fit
            for k, lo in (("epochs", 0), ("batch_size", 1), ("seed", 0)):
                if not isinstance(getattr(f, k), int) or getattr(f, k) < lo:
                    bad(f"{name}.fit.{k}", getattr(f, k), f"an integer >= {lo}")
            for k in ("lr", "eps", "weight_decay"):
                if not isinstance(getattr(f, k), (int, float)) or getattr(f, k) < 0:
                    bad(f"{name}.fit.{k}", getattr(f, k), "a number >= 0")
        if any(v <= 0 for v in grid_values(self.ape.channels, "ape.channels")):
            bad("ape.channels", self.ape.channels, "fractions of D in (0, 1] or channel counts > 1")
        for k in ("weights", "t_weights"):
            w = getattr(self.ape, k)
            if not isinstance(w, (list, tuple)) or len(w) != 2 or not all(isinstance(x, (int, float)) for x in w):
                bad(f"ape.{k}", w, "two numbers [w_sim, w_var] (the channel criterion -w_sim*sim + w_var*var)")
            setattr(self.ape, k, tuple(float(x) for x in w))
        t = self.ape.t_channels
        if not isinstance(t, (int, float)) or t <= 0:
            bad("ape.t_channels", t, "a fraction of D in (0, 1] or a channel count > 1")
        if self.logit_scale is not None and (not isinstance(self.logit_scale, (int, float)) or self.logit_scale <= 0):
            bad("logit_scale", self.logit_scale, "a number > 0 (the authors: 100), or null for the model's")
        if not isinstance(self.fresh_views, bool):
            bad("fresh_views", self.fresh_views, "true or false")
        if not isinstance(self.chunk, int) or self.chunk < 1:
            bad("chunk", self.chunk, "an integer >= 1")
        for k in ("views", "view_seed"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 0:
                bad(k, getattr(self, k), "an integer >= 0")

    def grids(self) -> str:
        """The searched grids in one line, for the report."""
        t, a = self.tip, self.ape
        scale = "the model's" if self.logit_scale is None else f"{self.logit_scale:g}"
        return (
            f"{self.preset}: Tip/Tip-F: alpha {t.alpha}, beta {t.beta}; APE: Q {a.channels}, alpha {a.alpha}, "
            f"beta {a.beta}, gamma {a.gamma} (w_sim, w_var {a.weights}); APE-T: Q {a.t_channels:g}; "
            f"Tip-F/APE-T: {t.fit.epochs}/{a.fit.epochs} epochs, lr {t.fit.lr:g}/{a.fit.lr:g}, weight decay "
            f"{t.fit.weight_decay:g}/{a.fit.weight_decay:g}; logit scale {scale}; cache views "
            f"{self.views or 'none (evaluation transform)'}{', fresh views every epoch' if self.fresh_views else ''}"
        )

    @classmethod
    def for_preset(cls, preset: str | None, dataset: str | None = None) -> HeadsConfig:
        """``None``: the defaults; ``"authors"``: the authors' settings for ``dataset``
        (:mod:`fdalign.eval.heads_presets`; an unknown set gets their common grids)."""
        from fdalign.eval import heads_presets as hp

        if preset in (None, "defaults"):
            return cls()
        name, _, forced = preset.partition(":")
        if name not in hp.PRESETS:
            raise FDAlignError(
                f"--heads-preset {preset!r} is not known; use authors or authors:<data set> "
                f"(data sets: {', '.join(sorted(hp.TIP))})"
            )
        key = hp.dataset_key(forced or dataset)
        if forced and key is None:
            raise FDAlignError(
                f"--heads-preset {preset!r}: no published settings for {forced!r}; known: {', '.join(sorted(hp.TIP))}"
            )
        what = key or f"{dataset or 'unknown data set'}: their common settings"
        return cls(
            tip=hp.authors_tip(key),
            ape=hp.authors_ape(key),
            views=hp.AUTHORS_VIEWS,
            fresh_views=True,
            logit_scale=hp.AUTHORS_LOGIT_SCALE,
            preset=f"authors ({what})",
        )

    @classmethod
    def from_yaml(cls, path) -> HeadsConfig:
        from fdalign.options import read_yaml

        p = Path(path)
        try:
            d = read_yaml(p, "heads config")
        except OSError as e:
            raise FDAlignError(f"cannot read heads config {p} ({e.__class__.__name__}); pass a YAML file") from None
        if d is not None and not isinstance(d, dict):
            raise FDAlignError(f"heads config {p} must be a YAML mapping with keys tip, ape, chunk")
        return cls.from_dict(d or {}, str(p))


_NESTED = {"tip": TipConfig, "ape": APEConfig, "fit": FitConfig}


def _build(cls, d: dict, source: str, prefix: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise FDAlignError(f"{source}: unknown field '{prefix}{unknown[0]}'; valid fields: {', '.join(sorted(names))}")
    kw = {}
    for k, v in d.items():
        if k in _NESTED:
            if not isinstance(v, dict):
                raise FDAlignError(f"{source}: field '{prefix}{k}' must be a mapping")
            v = _build(_NESTED[k], v, source, f"{prefix}{k}.")
        kw[k] = v
    return cls(**kw)


def parse_heads(text: str) -> list[str]:
    """``"zeroshot,tip,ape"`` -> the names, checked, in the given order without repeats."""
    names = list(dict.fromkeys(s.strip().lower() for s in text.split(",") if s.strip()))
    bad = [n for n in names if n not in HEAD_NAMES]
    if bad or not names:
        raise FDAlignError(
            f"--heads {text!r}: unknown head {bad[0] if bad else '(none)'}; choose from {','.join(HEAD_NAMES)}"
        )
    return names


def row_name(head: str, encoder_label: str) -> str:
    """ "Tip" for zero-shot CLIP's encoder (label ""), "Tip + FD-Align" for a fine-tuned one."""
    return DISPLAY[head] + (f" + {encoder_label}" if encoder_label else "")


def text_classifier(head: PrototypeHead) -> tuple[torch.Tensor, float]:
    """(normalised class prototypes ``[C, D]``, logit scale) of a zero-shot head."""
    w = head.prototypes if not head.trainable else head.weight.detach()
    return torch.nn.functional.normalize(w.float(), dim=-1), head.scale


def fit_heads(
    heads,
    prototypes,
    scale,
    train_features,
    train_labels,
    val,
    cfg: HeadsConfig,
    log: SelectionLog | None = None,
    label: str = "",
    progress: bool = False,
    views: torch.Tensor | None = None,
) -> dict[str, nn.Module]:
    """Fit the requested heads on one encoder's features: ``{head name: module [B, D] -> [B, C]}``.

    ``train_features`` ``[N, D]`` / ``train_labels`` ``[N]`` are the cache; ``val`` an EvalSplit of
    val features (role val); ``views`` ``[V, N, D]`` augmented encodings that Tip-F / APE-T train on
    (default: the cache itself). Tip-F starts from Tip's keys; APE-T from the cache, equal to Tip-Adapter.
    ``cfg.logit_scale`` (when set) replaces ``scale`` in every head but zero-shot CLIP's.
    """
    out: dict[str, nn.Module] = {}
    dev = prototypes.device
    zs_scale, scale = scale, scale if cfg.logit_scale is None else cfg.logit_scale
    keys, y = train_features.to(dev), train_labels.to(dev)
    fit_x = keys if views is None else views
    if "zeroshot" in heads:
        out["zeroshot"] = PrototypeHead(prototypes, zs_scale).to(dev)
    if {"tip", "tip-f"} & set(heads):
        out["tip"] = fit_tip(prototypes, scale, keys, y, val, cfg.tip, log, row_name("tip", label), cfg.chunk, progress)
    if "tip-f" in heads:
        out["tip-f"] = fit_tip_f(out["tip"], fit_x, y, val, cfg.tip, log, row_name("tip-f", label), progress)
    if "ape" in heads:
        out["ape"] = fit_ape(prototypes, scale, keys, y, val, cfg.ape, log, row_name("ape", label), cfg.chunk, progress)
    if "ape-t" in heads:
        out["ape-t"] = fit_ape_t(
            prototypes, scale, keys, y, fit_x, val, cfg.ape, log, row_name("ape-t", label), cfg.chunk, progress
        )
    return {h: out[h] for h in heads}


@dataclass
class CacheData:
    """The images the heads learn from: the K-shot cache and the val split (both eval-transformed),
    and the cache with the training augmentation (for ``HeadsConfig.views``)."""

    train: Dataset
    val: Dataset
    val_description: str
    augmented: Dataset | None = None


def evaluate_heads(
    encoders: dict[str, nn.Module],
    heads: list[str],
    prototypes: torch.Tensor,
    scale: float,
    data: CacheData,
    eval_sets: dict[str, EvalSet],
    cfg: HeadsConfig | None = None,
    batch_size: int = 256,
    device: str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
    num_workers: int = 0,
) -> tuple[dict, dict]:
    """Fit ``heads`` on each encoder and evaluate them all on ``eval_sets``.

    Args:
        encoders: ``{label: encoder}``; label "" for zero-shot CLIP, e.g. "FD-Align" for a run's.
        prototypes: ``[C, D]`` zero-shot class prototypes; scale: their logit scale.

    Returns:
        (metrics ``{set: {row: {"top1", "top5", "n"}}}`` with rows head-major as in the paper's
        table, selection record for the report: what was chosen, on which split, by which score).
    """
    cfg = cfg or HeadsConfig()
    if heads != ["zeroshot"]:
        _refuse_reported_val_images(data, eval_sets)
    prototypes = prototypes.to(device).float()
    log = SelectionLog()
    features: dict[int, tuple] = {}  # one encoding of the cache and val splits per distinct encoder
    fitted = {}
    for label, enc in encoders.items():
        enc.to(device)
        if heads == ["zeroshot"]:  # nothing to fit: the cache and val images need no encoding
            fitted[label] = {"zeroshot": PrototypeHead(prototypes, scale).to(device)}
            continue
        if id(enc) not in features:
            kw = dict(
                batch_size=batch_size, device=device, num_workers=num_workers, precision=precision, progress=progress
            )
            features[id(enc)] = (
                *encode_cache(enc, data, cfg, kw, _training_epochs(heads, cfg)),
                featcache.extract_features(enc, data.val, desc="val", **kw),
            )
        (tf, ty), views, (vf, vy) = features[id(enc)]
        val = feature_split(vf, vy, "val", data.val_description)
        fitted[label] = fit_heads(heads, prototypes, scale, tf, ty, val, cfg, log, label, progress, views)
    models = {row_name(h, label): (enc, fitted[label][h]) for h in heads for label, enc in encoders.items()}
    metrics = run_evaluation(
        models,
        eval_sets,
        batch_size=batch_size,
        device=device,
        precision=precision,
        progress=progress,
        num_workers=num_workers,
    )
    record = selection_record(log)
    record["search grids"] = cfg.grids()
    return metrics, record


def _training_epochs(heads, cfg: HeadsConfig) -> int:
    """Epochs of the longest trained head asked for (Tip-F, APE-T): fresh views to encode."""
    return max([cfg.tip.fit.epochs] * ("tip-f" in heads) + [cfg.ape.fit.epochs] * ("ape-t" in heads) + [0])


def _files(ds) -> list[str] | None:
    split = getattr(ds, "split", None)
    return None if split is None else [str(split.resolve(x)) for x in split.samples]


def _refuse_reported_val_images(data: CacheData, eval_sets: dict[str, EvalSet]) -> None:
    """The heads' hyper-parameters are chosen on ``data.val``: none of its images may be a reported one."""
    from fdalign.selection import EvalSplit, check_disjoint

    val_files = _files(data.val)
    if val_files is None:
        return
    others = {name: f for name, es in eval_sets.items() if (f := _files(es.dataset)) is not None}
    check_disjoint(EvalSplit(data.val, "val", data.val_description, files=val_files), others)


def encode_cache(encoder, data: CacheData, cfg: HeadsConfig, kw: dict, fresh: int = 0):
    """``((keys [N, D], labels [N]), views [V, N, D] or None)`` of one encoder.

    Without views the keys are the evaluation-transform features. With ``cfg.views = V`` the cache
    is encoded V times with the training augmentation (view v seeded ``view_seed + v``, without
    touching the global RNG) and the keys are the mean of the normalised views, as Tip-Adapter does.
    ``fresh`` > 0 (with ``cfg.fresh_views``): the returned views are instead ``fresh`` further
    draws (seeds after the cache's), one per training epoch, as the authors re-augment every epoch.
    """
    if data.augmented is None or (cfg.views <= 0 and not (cfg.fresh_views and fresh)):
        return featcache.extract_features(encoder, data.train, desc="cache", **kw), None

    def draws(first, n, what):
        out = []
        for v in range(n):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.view_seed + first + v)
                f, y = extract_features(encoder, data.augmented, desc=f"{what} {v + 1}/{n}", **kw)
            out.append(torch.nn.functional.normalize(f, dim=-1))
        return torch.stack(out), y

    if cfg.views > 0:
        views, y = draws(0, cfg.views, "cache view")
        keys = (views.mean(0), y)
    else:
        keys, views = featcache.extract_features(encoder, data.train, desc="cache", **kw), None
    if cfg.fresh_views and fresh:
        views, _ = draws(max(cfg.views, 0), fresh, "training view")
    return keys, views


def selection_record(log: SelectionLog) -> dict:
    """The log made readable for the report: ``"beta=5.5, alpha=1.2"`` instead of a 4,000-entry score table."""
    out = {}
    for what, e in log.entries.items():
        names = what.split(": ", 1)[-1].split(", ")
        chosen = e["chosen"]
        if isinstance(chosen, tuple) and len(chosen) == len(names):
            chosen = ", ".join(f"{n}={v:g}" for n, v in zip(names, chosen))
            if e.get("flat"):
                chosen += " (every grid point scored the same on val; the first one won the tie)"
            elif e.get("grid_edges"):
                chosen += f" (at the grid's edge: {', '.join(e['grid_edges'])}; consider widening it)"
        out[what] = {
            "chosen": chosen,
            "on": e["on"],
            "metric": e["metric"],
            "score": e["score"],
            "candidates": len(e["scores"]),
        }
    out["test / OOD sets"] = "only evaluated; never used to select anything"
    return out


# ------------------------------------------------------------------------------------------------
# where the cache and val images come from


def cache_data_for_run(run_dir, transform, train_transform=None) -> CacheData:
    """A run's own K-shot split (``splits/train.json``) and val split (``splits/val.json``)."""
    from fdalign.data import ImageDataset, load_split

    run_dir = Path(run_dir)
    paths = [run_dir / "splits" / f"{s}.json" for s in ("train", "val")]
    for p in paths:
        if not p.is_file():
            raise FDAlignError(f"{p} does not exist; cache heads need the run's splits (re-run `fdalign train`)")
    train, val = (load_split(p) for p in paths)
    return CacheData(
        ImageDataset(train, transform),
        ImageDataset(val, transform),
        f"val ({len(val)} images of {paths[1]})",
        ImageDataset(train, train_transform or transform),
    )


def cache_data_for_model(
    data, image_root, classnames, shots: int, seed: int, transform, train_transform=None
) -> CacheData:
    """``shots`` images per class of ``data``'s train split (seed ``seed``) and their val split."""
    from fdalign.data import ImageDataset, open_dataset, sample_fewshot, val_shots

    splits = sample_fewshot(open_dataset(data, image_root, classnames), shots, seed)
    where = "val/" if splits["val"].name == "val" else "train/, held out from the cache"
    return CacheData(
        ImageDataset(splits["train"], transform),
        ImageDataset(splits["val"], transform),
        f"val ({val_shots(shots)}-shot of {where}, seed {seed}, {len(splits['val'])} images)",
        ImageDataset(splits["train"], train_transform or transform),
    )


# ------------------------------------------------------------------------------------------------
# the two `fdalign eval --heads` entry points (args: the eval command's options)


def encoder_label(train_config: dict) -> str:
    """The suffix of a run's rows: "FD-Align" (beta > 0), "FT" (beta 0) or "LP" (encoder frozen)."""
    if train_config.get("mode") == "linear-probe":
        return "LP"
    return "FT" if float(train_config.get("beta", 1.0) or 0.0) == 0.0 else "FD-Align"


def _config(args, dataset: str | None = None) -> HeadsConfig:
    """``--heads-preset`` (for ``dataset``), then ``--heads-config``'s fields on top of it."""
    from fdalign.data.names import guess_dataset_name

    preset = getattr(args, "heads_preset", None)
    base = HeadsConfig.for_preset(preset, dataset or guess_dataset_name(getattr(args, "data", None)))
    path = getattr(args, "heads_config", None)
    if not path:
        return base
    own = HeadsConfig.from_yaml(path)  # checks the file on its own first: its errors name its fields
    if preset in (None, "defaults"):
        return own
    from fdalign.options import read_yaml

    return HeadsConfig.from_dict(_merge(dataclasses.asdict(base), read_yaml(path, "heads config") or {}), str(path))


def _merge(base: dict, over: dict) -> dict:
    return {
        **base,
        **{
            k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
            for k, v in over.items()
        },
    }


def _run_kw(args, progress) -> dict:
    return dict(
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        progress=progress,
        num_workers=args.num_workers,
    )


def evaluate_run_heads(args, loaded, models: dict, eval_sets: dict, progress: bool = False) -> tuple[dict, dict]:
    """``fdalign eval RUN --heads``: each head on zero-shot CLIP (``models["zero-shot"]``'s encoder,
    absent with --no-zeroshot) and on the run's fine-tuned encoder; the cache is the run's K-shot split."""
    train_cfg = dataclasses.asdict(loaded.config) if dataclasses.is_dataclass(loaded.config) else dict(loaded.config)
    from fdalign.data.names import guess_dataset_name

    heads = parse_heads(args.heads)
    cfg = _config(args, train_cfg.get("dataset_name") or guess_dataset_name(train_cfg.get("data")))
    encoders = {}
    if "zero-shot" in models:
        encoders[""] = models["zero-shot"][0]
    encoders[encoder_label(train_cfg)] = models["fine-tuned"][0]
    data = cache_data_for_run(loaded.run_dir, loaded.backend.preprocess_eval(), loaded.backend.preprocess_train())
    if len(data.train.split.classnames) != len(loaded.classnames):
        raise FDAlignError(
            f"{loaded.run_dir}/splits/train.json has {len(data.train.split.classnames)} classes but "
            f"the run's model {len(loaded.classnames)}; re-run `fdalign train`"
        )
    prototypes, scale = text_classifier(loaded.zeroshot_head)
    metrics, selection = evaluate_heads(
        encoders, heads, prototypes, scale, data, eval_sets, cfg, **_run_kw(args, progress)
    )
    selection["cache"] = f"the run's K-shot split ({len(data.train)} images of {loaded.run_dir}/splits/train.json)"
    return metrics, selection


def evaluate_model_heads(args, backend, zeroshot_head, eval_sets: dict, progress: bool = False) -> tuple[dict, dict]:
    """``fdalign eval MODEL --data D --shots K --seed S --heads``: the cache is K images per class of D/train."""
    heads, cfg = parse_heads(args.heads), _config(args)
    data = cache_data_for_model(
        args.data,
        args.image_root,
        args.classnames,
        args.shots,
        args.seed,
        backend.preprocess_eval(),
        backend.preprocess_train(),
    )
    prototypes, scale = text_classifier(zeroshot_head)
    metrics, selection = evaluate_heads(
        {"": backend.image_encoder}, heads, prototypes, scale, data, eval_sets, cfg, **_run_kw(args, progress)
    )
    selection["cache"] = f"{args.shots}-shot of {args.data} train split, seed {args.seed} ({len(data.train)} images)"
    return metrics, selection


__all__ = [
    "CacheData",
    "DISPLAY",
    "HEAD_NAMES",
    "HeadsConfig",
    "evaluate_heads",
    "fit_heads",
    "parse_heads",
    "row_name",
    "selection_record",
    "text_classifier",
    "cache_data_for_run",
    "cache_data_for_model",
    "encode_cache",
    "encoder_label",
    "evaluate_model_heads",
    "evaluate_run_heads",
]
