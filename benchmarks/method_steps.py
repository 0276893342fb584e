"""Seconds per training step of every method of docs/methods.md against fine-tuning, in one run.

Each method's step is what the trainer runs (:func:`fdalign.train.step.fdalign_forward`, backward, AdamW step) on
the same random batch, with the built-in fdalign-world model (64 px ViT) or ``--model``; the methods take turns
(round-robin), so a machine busy with other work slows them alike, and the median over ``--rounds`` is printed
with its ratio to fine-tuning. f0 runs in fp32 (CPU); CLIP-LoRA adapts both towers (rank 2).

    python benchmarks/method_steps.py [--batch 32] [--rounds 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _setup(name: str, base, classnames, templates, device):
    """``(step_fn)`` for one method: a fresh copy of the model, its optimiser and the trainer's step inputs."""
    from fdalign.losses import cosine_logits, frozen_copy
    from fdalign.prompts import format_prompts
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.methods import method_spec
    from fdalign.train.step import LossSettings, StepExtras, TextSide, fdalign_forward
    from fdalign.train.trainable import TrainableSpec, apply_trainable

    backend = copy.deepcopy(base)
    spec = method_spec(name)
    protos = build_prototypes(backend, classnames, templates, spc=SPCConfig(), cache_dir=False)
    scale = backend.logit_scale
    encoder = backend.image_encoder
    start = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    text = None
    lora = name == "clip-lora"
    if lora:
        tspec = TrainableSpec.parse("lora", lora_rank=2, lora_alpha=1.0, lora_dropout=0.25, lora_targets="qkv")
        apply_trainable(encoder, tspec, seed=0)
    if spec.text_learns:
        prompts = [spec.prompt] if spec.prompt else templates
        tokens = backend.tokenize(format_prompts(classnames, prompts)).reshape(len(classnames), len(prompts), -1)
        text = TextSide(backend.text_tower, tokens.to(device), torch.Generator().manual_seed(0))
        if lora:
            apply_trainable(text.tower, tspec, seed=1)
        else:
            text.tower.requires_grad_(True)
    params = [p for p in encoder.parameters() if p.requires_grad]
    if text is not None:
        params += [p for p in text.tower.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    reference = protos.class_prototypes if spec.regulariser == "logit-kd" else protos.corrected_prototypes
    f0 = frozen_copy(encoder) if spec.needs_f0 else None
    extras = StepExtras(text=text)
    if spec.regulariser == "l2-sp":
        names = [n for n, p in encoder.named_parameters() if p.requires_grad]
        extras.params = [dict(encoder.named_parameters())[n] for n in names]
        extras.start = [start[n] for n in names]
    head_protos = protos.class_prototypes.to(device)
    if spec.prototypes_each_step:
        head = lambda f: cosine_logits(f, text.prototypes(), scale)  # noqa: E731
    else:
        head = lambda f: cosine_logits(f, head_protos, scale)  # noqa: E731
    s = LossSettings(
        beta=0.0 if spec.regulariser == "none" else 1.0,
        scale=scale,
        regulariser=spec.regulariser,
        objective=spec.objective,
    )
    encoder.train()

    def step(images, labels):
        loss, _ = fdalign_forward(encoder, f0, head, images, labels, reference, s, None, extras)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fdalign-world")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--classes", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--methods", default="fine-tune,fd-align,logit-kd,feature-kd,l2-sp,flyp,clip-lora", help="comma-separated"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fdalign.backends import load_clip
    from fdalign.prompts import load_templates

    base = load_clip(args.model)
    device = torch.device("cpu")
    classnames = [f"class {i}" for i in range(args.classes)]
    templates = load_templates("openai80")
    size = base.image_spec.size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, size, size, generator=g)
    labels = torch.randint(args.classes, (args.batch,), generator=g)
    methods = args.methods.split(",")
    steps = {m: _setup(m, base, classnames, templates, device) for m in methods}
    for m in methods:  # one warm-up step each
        steps[m](images, labels)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(args.rounds):
        for m in methods:
            t0 = time.perf_counter()
            steps[m](images, labels)
            times[m].append(time.perf_counter() - t0)
    base_t = statistics.median(times["fine-tune"]) if "fine-tune" in times else None
    print(f"{args.model}, batch {args.batch}, {args.rounds} rounds, {args.threads} thread(s), CPU")
    print(f"{'method':<12} {'s / step (median)':>18} {'vs fine-tune':>13}")
    for m in methods:
        t = statistics.median(times[m])
        ratio = f"{t / base_t:.2f}x" if base_t else "-"
        print(f"{m:<12} {t:>18.3f} {ratio:>13}")


if __name__ == "__main__":
    main()
