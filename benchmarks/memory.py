"""What --trainable saves: trainable parameters, optimiser state, peak memory and step time, side by side.

For each ``--trainable`` kind (full, lora, last-blocks:2, projection) and each method (FD-Align with
beta 1, fine-tuning with beta 0) one child process builds ViT-B-32 with random weights
(``open_clip.create_model("ViT-B-32")``, nothing downloaded), applies the kind as ``fdalign train``
does (:func:`fdalign.train.trainable.apply_trainable`; f0 is a frozen copy, or for LoRA the encoder
itself with its adapters off), and runs the trainer's step (:func:`fdalign.train.step.fdalign_forward`,
backward, AdamW). A child per configuration, because a process's peak RSS never goes down:

* peak memory: the child's peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on CUDA; "train MB" is the
  peak above the child's peak once the model was built (on CPU that baseline holds torch and the whole
  CLIP model open_clip built, text tower included, which the ratio of peaks would otherwise dilute);
* optimiser state: the bytes of AdamW's state tensors after the first step;
* step time: median over ``--steps`` steps after two warm-up steps.

One table, with ratios to ``full`` of the same method.

    python benchmarks/memory.py --batch 8                  # CPU
    python benchmarks/memory.py --batch 64 --device cuda   # GPU (goal: LoRA FD-Align peak <= 40% of full)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

KINDS = ("full", "lora", "last-blocks:2", "projection")
METHODS = (("fd-align", 1.0), ("fine-tune", 0.0))


def _peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> dict:
    import open_clip
    import torch

    from fdalign.eval.features import autocast_context
    from fdalign.heads import PrototypeHead
    from fdalign.train import trainer
    from fdalign.train.step import LossSettings, fdalign_forward
    from fdalign.train.trainable import TrainableSpec, apply_trainable, count_parameters

    device = torch.device(args.device)
    torch.manual_seed(0)
    visual = open_clip.create_model(args.model).visual.to(device)
    loaded = _peak_mb(device)  # the process with the model built: what every kind pays before training
    dim, size = visual.output_dim, visual.image_size[0]
    spec = TrainableSpec.parse(args.kind, lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank)
    beta = float(args.beta)
    f0 = None
    dtype_0 = None if spec.kind == "lora" or device.type != "cuda" else torch.bfloat16  # as the trainer's auto
    if beta:
        f0 = None if spec.kind == "lora" else trainer._frozen_copy(visual, "eval", dtype_0)
    apply_trainable(visual, spec, seed=0)
    if beta and spec.kind == "lora":
        f0 = trainer._frozen_copy(visual, "eval")  # the same module, adapters off
    if args.grad_checkpointing:
        visual.set_grad_checkpointing(True)
    visual.train()
    trainable, total = count_parameters(visual)
    g = torch.Generator().manual_seed(0)
    classes = torch.nn.functional.normalize(torch.randn(100, dim, generator=g), dim=-1)
    spurious = torch.nn.functional.normalize(torch.randn(20, dim, generator=g), dim=-1).to(device)
    head = PrototypeHead(classes, 100.0).to(device)
    params = [p for p in visual.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    x = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, 100, (args.batch,), generator=g).to(device)
    settings = LossSettings(beta=beta, scale=100.0)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast_context(device, args.precision):
            loss, _ = fdalign_forward(visual, f0, head, x, y, spurious, settings)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    step()
    step()
    times = [step() for _ in range(args.steps)]
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    peak = _peak_mb(device)
    return {
        "train_mb": peak - loaded,
        "trainable": trainable,
        "total": total,
        "optim_mb": state / 2**20,
        "peak_mb": peak,
        "step_ms": statistics.median(times) * 1e3,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture, random weights")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="measured steps per configuration (median reported)")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast on CUDA")
    p.add_argument("--device", default="auto")
    p.add_argument("--grad-checkpointing", action="store_true", help="gradient checkpointing in every configuration")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each child (0: torch's default)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--child", nargs=2, metavar=("KIND", "BETA"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        args.kind, args.beta = args.child
        print(json.dumps(child(args)))
        return 0

    rows = {}
    for method, beta in METHODS:
        for kind in args.kinds:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, str(beta)]
            cmd += ["--model", args.model, "--batch", str(args.batch), "--steps", str(args.steps)]
            cmd += ["--lora-rank", str(args.lora_rank), "--precision", args.precision, "--device", args.device]
            cmd += ["--threads", str(args.threads)] + (["--grad-checkpointing"] if args.grad_checkpointing else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            rows[method, kind] = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"{args.model} (random weights), batch {args.batch}, {args.device}, {args.precision}, LoRA rank "
        f"{args.lora_rank}, peak = {'max_memory_allocated' if args.device.startswith('cuda') else 'peak RSS'}"
        + (", gradient checkpointing" if args.grad_checkpointing else "")
    )
    head = f"{'method':10s} {'trainable':14s} {'params':>12s} {'optim MB':>9s} {'peak MB':>9s} {'train MB':>9s}"
    head += f" {'step ms':>8s} {'params/full':>11s} {'optim/full':>10s} {'peak/full':>9s} {'train/full':>10s}"
    print(head + f" {'step/full':>9s}")
    for method, _ in METHODS:
        base = rows[method, "full"] if (method, "full") in rows else None
        for kind in args.kinds:
            r = rows[method, kind]
            line = f"{method:10s} {kind:14s} {r['trainable']:12,d} {r['optim_mb']:9.1f} {r['peak_mb']:9.0f}"
            line += f" {r['train_mb']:9.0f} {r['step_ms']:8.0f}"
            if base:
                line += (
                    f" {r['trainable'] / base['trainable']:11.4f} {r['optim_mb'] / base['optim_mb']:10.4f}"
                    f" {r['peak_mb'] / base['peak_mb']:9.3f} {r['train_mb'] / base['train_mb']:10.3f}"
                    f" {r['step_ms'] / base['step_ms']:9.3f}"
                )
            print(line)
    if ("fd-align", "lora") in rows and ("fd-align", "full") in rows:
        ratio = rows["fd-align", "lora"]["peak_mb"] / rows["fd-align", "full"]["peak_mb"]
        print(f"ratio LoRA FD-Align / full FD-Align peak memory: {ratio:.3f} (goal on a GPU at batch 64: <= 0.40)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
