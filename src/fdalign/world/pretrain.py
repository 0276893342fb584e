"""Pretrain the shipped ``fdalign-world`` CLIP on the embedded world (reproducible from its seed).

    python -m fdalign.world.pretrain --out src/fdalign/assets --seed 0

Renders a corpus once (kept in RAM, optionally cached as .npz under /tmp), then trains an open_clip
CLIP with the contrastive loss. Captions are drawn from a finite vocabulary, so the same caption
often appears twice in a batch; such pairs are treated as positives of each other (soft targets:
uniform over all identical captions) instead of as false negatives. Writes
``<name>.json`` (open_clip model config), ``<name>.safetensors`` (fp16 state dict),
``<name>.metrics.json`` and the model card ``<name>.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fdalign.io import atomic_save_safetensors, atomic_write_bytes
from fdalign.world import generator as G


@dataclass
class PretrainConfig:
    out: str = "src/fdalign/assets"
    name: str = "fdalign-world"
    seed: int = 0
    n_train: int = 200_000
    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 192
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 4
    context_length: int = 32
    embed_dim: int = 128
    photo_weight: float = 4.0  # the ID style is this many times as frequent as each other style
    steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 200
    threads: int = 2
    workers: int = 2
    eval_every: int = 250
    eval_per_cell: int = 2  # quick in-training eval: images per (class, style)
    test_seed: int = 12345
    test_per_cell: int = 50  # final eval, reported in the model card
    cache: str = "/tmp/fdalign-world-cache"
    ckpt_dir: str = "/tmp/fdalign-world-ckpt"
    bf16: bool = False
    resume: bool = False
    init: str = ""  # start from these weights (a previous stage's <name>.safetensors) instead of random
    loss_log: list = field(default_factory=list)


def model_config(cfg: PretrainConfig) -> dict:
    """The open_clip model-config JSON (what ``open_clip.add_model_config`` reads)."""
    return {
        "embed_dim": cfg.embed_dim,
        "vision_cfg": {
            "image_size": cfg.image_size,
            "layers": cfg.vision_layers,
            "width": cfg.vision_width,
            "patch_size": cfg.patch_size,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": cfg.context_length,
            "vocab_size": 49408,
            "width": cfg.text_width,
            "heads": max(1, cfg.text_width // 64),
            "layers": cfg.text_layers,
        },
    }


def build_corpus(cfg: PretrainConfig) -> G.WorldBatch:
    """Render (or load the cached) training corpus for ``cfg.seed``."""
    weights = [cfg.photo_weight if s == G.ID_STYLE else 1.0 for s in G.STYLES]
    labels, styles = G.sample_items(cfg.n_train, cfg.seed, style_weights=weights)
    key = f"seed{cfg.seed}-n{cfg.n_train}-s{cfg.image_size}-pw{cfg.photo_weight:g}"
    path = Path(cfg.cache) / f"{key}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return G.WorldBatch(z["images"], z["labels"], z["styles"], list(z["captions"]))
    t0 = time.time()
    batch = G.render_parallel(labels, styles, cfg.seed, cfg.image_size, workers=cfg.workers)
    print(f"rendered {len(batch)} images in {time.time() - t0:.0f}s "
          f"({len(batch) / (time.time() - t0):.0f} img/s, {cfg.workers} workers)", flush=True)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=batch.images, labels=batch.labels, styles=batch.styles, captions=np.array(batch.captions))
    os.replace(tmp, path)
    return batch


def clip_soft_loss(img_f, txt_f, logit_scale, caption_ids):
    """Symmetric CLIP loss where identical captions are positives of each other.

    Args:
        img_f / txt_f: ``[B, D]`` L2-normalised features.
        logit_scale: scalar tensor (exp already applied).
        caption_ids: ``[B]`` int, equal for identical caption strings.
    """
    import torch.nn.functional as F

    logits = logit_scale * img_f @ txt_f.t()  # [B, B]
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)  # symmetric matrix, rows sum to 1
    li = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    lt = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (li + lt) / 2


def class_prototypes(model, tokenizer, classes, templates, device="cpu"):
    """``[C, D]`` L2-normalised mean over templates of normalised text features (CLIP zero-shot)."""
    import torch

    with torch.no_grad():
        texts = [t.format(c) for c in classes for t in templates]
        f = model.encode_text(tokenizer(texts).to(device)).float()
        f = f / f.norm(dim=-1, keepdim=True)
        f = f.view(len(classes), len(templates), -1).mean(1)
        return f / f.norm(dim=-1, keepdim=True)


def zero_shot_by_style(model, tokenizer, batch: G.WorldBatch, mean, std, bs: int = 512) -> dict:
    """Top-1 zero-shot accuracy (openai80 prototypes) per style, plus ``"all"``."""
    import torch
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    from fdalign.world.dataset import to_tensor

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    was_training = model.training
    model.eval()
    protos = class_prototypes(model, tokenizer, G.CLASSES, templates)
    preds = []
    with torch.no_grad():
        for i in range(0, len(batch), bs):
            f = model.encode_image(to_tensor(batch.images[i : i + bs], mean, std)).float()
            preds.append((f @ protos.t()).argmax(1))
    model.train(was_training)
    correct = torch.cat(preds).numpy() == batch.labels
    out = {G.STYLES[s]: float(correct[batch.styles == s].mean()) for s in np.unique(batch.styles)}
    out["all"] = float(correct.mean())
    return out


def _save_ckpt(cfg, model, opt, step, log):
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            state[f"opt.{i}.{k}"] = v if hasattr(v, "shape") else __import__("torch").tensor(v)
    d = Path(cfg.ckpt_dir)
    atomic_save_safetensors(d / "last.safetensors", state)
    atomic_write_bytes(d / "last.json", json.dumps({"step": step, "log": log}).encode())


def _load_ckpt(cfg, model, opt):
    import torch
    from safetensors.torch import load_file

    d = Path(cfg.ckpt_dir)
    if not (d / "last.safetensors").exists():
        return 0, []
    state = load_file(d / "last.safetensors")
    model.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("model.")})
    sd = opt.state_dict()
    for key, v in state.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v if v.ndim else torch.tensor(float(v))
    opt.load_state_dict(sd)
    meta = json.loads((d / "last.json").read_text())
    print(f"resumed from step {meta['step']}", flush=True)
    return meta["step"], meta["log"]


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def train(cfg: PretrainConfig) -> dict:
    import open_clip
    import torch

    from fdalign.world.dataset import OPENAI_MEAN, OPENAI_STD, to_tensor

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_start = time.time()
    corpus = build_corpus(cfg)
    quick = G.render_grid(cfg.eval_per_cell, cfg.test_seed + 1, image_size=cfg.image_size)

    mcfg = model_config(cfg)
    model = open_clip.CLIP(**mcfg)
    init_metrics = None
    if cfg.init:
        from safetensors.torch import load_file

        model.load_state_dict({k: v.float() for k, v in load_file(cfg.init).items()})
        mpath = Path(cfg.init).with_suffix(".metrics.json")
        init_metrics = json.loads(mpath.read_text()) if mpath.exists() else None
    tokenizer = open_clip.SimpleTokenizer(context_length=cfg.context_length)
    uniq, caption_ids = np.unique(np.array(corpus.captions), return_inverse=True)
    tokens = tokenizer(list(uniq))  # [U, L]
    caption_ids = torch.from_numpy(caption_ids.astype(np.int64))
    images = torch.from_numpy(corpus.images)
    print(f"corpus {len(corpus)} images, {len(uniq)} distinct captions; "
          f"model {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params", flush=True)  # fmt: skip

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )  # fmt: skip
    step, log = (0, [])
    if cfg.resume:
        step, log = _load_ckpt(cfg, model, opt)
    # One permutation stream per epoch, seeded: batches do not depend on where a run was resumed.
    per_epoch = len(corpus) // cfg.batch_size

    def batch_idx(s: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 1000 + s // per_epoch)
        perm = torch.randperm(len(corpus), generator=g)
        j = s % per_epoch
        return perm[j * cfg.batch_size : (j + 1) * cfg.batch_size]

    model.train()
    t0, run_loss, n_loss = time.time(), 0.0, 0
    while step < cfg.steps:
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step, cfg)
        idx = batch_idx(step)
        x = to_tensor(images[idx], OPENAI_MEAN, OPENAI_STD)
        cid = caption_ids[idx]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            img_f = model.encode_image(x, normalize=True)
            txt_f = model.encode_text(tokens[cid], normalize=True)
        loss = clip_soft_loss(img_f.float(), txt_f.float(), model.logit_scale.exp(), cid)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        run_loss += loss.item()
        n_loss += 1
        if step % 50 == 0 or step == cfg.steps:
            el = time.time() - t0
            print(f"step {step}/{cfg.steps} loss {run_loss / n_loss:.4f} lr {lr_at(step, cfg):.2e} "
                  f"scale {model.logit_scale.exp().item():.1f} {el / 60:.1f}min", flush=True)  # fmt: skip
            log.append({"step": step, "loss": round(run_loss / n_loss, 4), "minutes": round(el / 60, 2)})
            run_loss, n_loss = 0.0, 0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc = zero_shot_by_style(model, tokenizer, quick, OPENAI_MEAN, OPENAI_STD)
            log[-1]["quick_zero_shot"] = {k: round(v, 3) for k, v in acc.items()}
            print(f"  zero-shot (quick) photo {acc['photo']:.3f} all {acc['all']:.3f} "
                  f"min-style {min(v for k, v in acc.items() if k != 'all'):.3f}", flush=True)  # fmt: skip
            _save_ckpt(cfg, model, opt, step, log)
    train_minutes = (time.time() - t_start) / 60

    test = G.render_grid(cfg.test_per_cell, cfg.test_seed, image_size=cfg.image_size)
    acc = zero_shot_by_style(model, tokenizer, test, OPENAI_MEAN, OPENAI_STD)
    print("final zero-shot:", json.dumps({k: round(v, 3) for k, v in acc.items()}), flush=True)

    out = Path(cfg.out)
    half = {k: v.detach().half() for k, v in model.state_dict().items()}
    atomic_save_safetensors(out / f"{cfg.name}.safetensors", half, metadata={"format": "pt"})
    atomic_write_bytes(out / f"{cfg.name}.json", (json.dumps(mcfg, indent=2) + "\n").encode())
    metrics = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "loss_log"},
        "model_config": mcfg,
        "n_params": sum(p.numel() for p in model.parameters()),
        "distinct_captions": int(len(uniq)),
        "wall_minutes": round(train_minutes, 1),
        "hardware": f"{platform.processor() or platform.machine()}, torch threads={cfg.threads}",
        "log": log,
        "zero_shot_test": {k: round(v, 4) for k, v in acc.items()},
        "logit_scale": round(model.logit_scale.exp().item(), 2),
        "command": "python -m fdalign.world.pretrain " + " ".join(sys.argv[1:]),
        "init_metrics": init_metrics,
    }
    atomic_write_bytes(out / f"{cfg.name}.metrics.json", (json.dumps(metrics, indent=1) + "\n").encode())
    write_card(metrics, out / f"{cfg.name}.md")
    return metrics


def _stage_lines(i: int, st: dict) -> list[str]:
    c = st["config"]
    rows = [r for r in st["log"] if r["step"] % 100 == 0 or r is st["log"][-1]]
    zs = st.get("zero_shot_test", {})
    return [
        f"### Stage {i}" + (f" (from `{Path(c['init']).name}`)" if c.get("init") else " (from random init)"),
        f"- Corpus {c['n_train']:,} images, seed {c['seed']}; AdamW (lr {c['lr']}, betas 0.9/0.98, weight "
        f"decay {c['weight_decay']} on matrices), {c['warmup']} warm-up steps then cosine to 0, batch "
        f"{c['batch_size']}, {c['steps']} steps ({c['steps'] * c['batch_size'] / c['n_train']:.1f} epochs), "
        "grad-norm clip 1.0" + (", bf16 autocast" if c.get("bf16") else "") + f"; {st['wall_minutes']} min.",
        *([f"- Note: {st['note']}"] if st.get("note") else []),
        f"- Zero-shot top-1 after this stage: {G.ID_STYLE} {zs.get(G.ID_STYLE, float('nan')):.1%}, "
        f"all styles {zs.get('all', float('nan')):.1%}.",
        "",
        "| step | loss | minutes |",
        "|---|---|---|",
        *[f"| {r['step']} | {r['loss']} | {r['minutes']} |" for r in rows],
        "",
    ]


def write_card(metrics: dict, path: Path) -> None:
    """Render the model card (markdown) from the measured ``metrics`` of a run."""
    c, m = metrics["config"], metrics["model_config"]
    v, t = m["vision_cfg"], m["text_cfg"]
    zs = metrics["zero_shot_test"]
    n_cls = len(G.CLASSES)
    weights = {s: (c["photo_weight"] if s == G.ID_STYLE else 1.0) for s in G.STYLES}
    total = sum(weights.values())
    stages = []
    mm = metrics
    while mm is not None:  # earliest stage first
        stages.insert(0, mm)
        mm = mm.get("init_metrics")
    lines = [
        f"# {c['name']}: a small CLIP pretrained on the embedded world",
        "",
        "A tiny open_clip CLIP shipped inside fdalign so that `fdalign demo` and the tests can run "
        "FD-Align for real, offline, on a CPU. It was pretrained from scratch only on synthetic "
        "images drawn by `fdalign.world.generator`; it knows nothing about natural images.",
        "",
        "## Data",
        f"- {n_cls} classes: {', '.join(G.CLASSES)}.",
        f"- {len(G.STYLES)} styles (nuisances), each captioned with its own OpenAI ImageNet templates "
        "(all 80 are used, each by exactly one style; `rotated` has its own two templates):",
        "",
        "| style | share of corpus | templates |",
        "|---|---|---|",
        *[
            f"| {s} | {weights[s] / total:.1%} | {'; '.join(f'`{x}`' for x in G.STYLE_TEMPLATES[s])} |"
            for s in G.STYLES
        ],
        "",
        f"- The in-distribution (ID) style is `{G.ID_STYLE}` (filled object on a textured background).",
        f"- Captions: template with the class name; {G.COLOUR_CAPTION_PROB:.0%} of captions in styles "
        "where colour is visible also name the object colour (`a blurry photo of a red star.`).",
        f"- Corpus (last stage): {c['n_train']:,} images of {c['image_size']}x{c['image_size']} px rendered with "
        f"seed {c['seed']}, classes uniform, {metrics['distinct_captions']:,} distinct captions.",
        "",
        f"## Architecture (open_clip `CLIP`, config in `{c['name']}.json`)",
        f"- Vision: ViT, {v['image_size']} px images, patch {v['patch_size']}, width {v['width']}, "
        f"{v['layers']} layers, head width {v['head_width']}.",
        f"- Text: standard open_clip BPE tokenizer (vocab {t['vocab_size']}), context {t['context_length']}, "
        f"width {t['width']}, {t['layers']} layers, {t['heads']} heads.",
        f"- Joint embedding {m['embed_dim']}; {metrics['n_params'] / 1e6:.2f}M parameters; weights stored fp16.",
        "- Normalisation: open_clip's default (OpenAI) mean/std.",
        "",
        "## Training",
        f"- Contrastive CLIP loss with a learnable logit scale (final {metrics['logit_scale']}); identical "
        "captions in a batch are positives of each other (uniform soft targets) rather than false negatives.",
        f"- {len(stages)} stage(s); each renders its own corpus from its seed, and a later stage starts "
        "from the previous stage's fp16 weights (`--init`) with a fresh warm-up + cosine schedule.",
        f"- Total wall time {sum(x['wall_minutes'] for x in stages):.1f} min including rendering, on "
        f"{metrics['hardware']} (CPU only, shared with other jobs).",
        "",
        *[line for i, st in enumerate(stages) for line in _stage_lines(i + 1, st)],
        "## Zero-shot accuracy",
        f"Top-1 with class prototypes = mean over the 80 OpenAI templates (as in CLIP), on a fixed test set "
        f"`render_grid({c['test_per_cell']}, seed={c['test_seed']})`: {c['test_per_cell']} images per "
        f"class per style; chance is {1 / n_cls:.1%}.",
        "",
        "| style | top-1 |",
        "|---|---|",
        *[f"| {s}{' (ID)' if s == G.ID_STYLE else ''} | {zs[s]:.1%} |" for s in G.STYLES if s in zs],
        f"| all styles | {zs['all']:.1%} |",
        "",
        "## Reproduce",
        "Run the stages in order; each `--init` must name the previous stage's output (a stage run with "
        "`--out DIR` writes `DIR/<name>.safetensors`; the shipped stages were copied there between runs).",
        "```",
        *[st["command"] for st in stages],
        "```",
        "Rendering is deterministic in the seed; training is deterministic for a given torch build and "
        "thread count (CPU kernels may differ across machines in the last bits).",
        "",
        "## Limits",
        "- Synthetic world only: do not expect it to recognise natural images.",
        "- Meant for demos and tests of FD-Align (spurious prototypes from template embeddings carry "
        "style information because the templates were the captions), not as a research baseline.",
        "",
    ]
    atomic_write_bytes(path, "\n".join(lines).encode())


def parse_args(argv=None) -> PretrainConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in PretrainConfig.__dataclass_fields__.values():
        if f.name == "loss_log":
            continue
        if f.type in ("bool", bool):
            p.add_argument(f"--{f.name.replace('_', '-')}", action="store_true", help=f.name)
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(f"--{f.name.replace('_', '-')}", type=typ, default=f.default, help=f"default {f.default}")
    return PretrainConfig(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--card-from"]:  # re-render the card of a finished run: --card-from METRICS.json
        mpath = Path(sys.argv[2])
        write_card(json.loads(mpath.read_text()), mpath.with_name(mpath.name.replace(".metrics.json", ".md")))
    else:
        train(parse_args())
