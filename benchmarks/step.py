"""What FD-Align costs over plain fine-tuning, measured side by side in one run.

Prints three lines with the word ``ratio``:

1. the core step (forward ft, CE + beta KL, backward, optimiser step) of FD-Align over fine-tuning,
   f0 run live (inference mode);
2. the same with f0's spurious distributions read from the f0 cache (no f0 forward);
3. the whole trainer loop (``fdalign.train.trainer.train``, data loading, logging, validation)
   for FD-Align without and with a warm cache, over fine-tuning;

plus the process's peak memory after each stage and the images/s of evaluation feature extraction.
Steps are interleaved (FT, FD, FD-cached, FT, ...) so machine noise hits all three alike.

    python benchmarks/step.py                       # ViT-B-32 (random weights), batch 8, CPU
    python benchmarks/step.py --model fdalign-world --batch 32 --steps 20
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time

import torch


def peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def core_steps(backend, protos, args, device):
    from fdalign.heads import PrototypeHead
    from fdalign.losses import spurious_log_probs
    from fdalign.train.step import LossSettings, fdalign_forward, frozen_copy

    ft = backend.image_encoder.to(device).train()
    f0 = frozen_copy(ft)
    head = PrototypeHead(protos.class_prototypes, backend.logit_scale).to(device)
    spur = protos.corrected_prototypes.to(device)
    opt = torch.optim.AdamW(ft.parameters(), lr=1e-6)
    size = backend.image_spec.size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, protos.class_prototypes.shape[0], (args.batch,), generator=g).to(device)
    with torch.inference_mode():
        cached = spurious_log_probs(f0(x), spur, backend.logit_scale).clone()
    cached = cached.clone()  # a normal tensor, as read from the cache file
    ft_only = LossSettings(beta=0.0, scale=backend.logit_scale)
    fd = LossSettings(beta=1.0, scale=backend.logit_scale)

    def step(settings, log_p0=None):
        t0 = time.perf_counter()
        loss, _ = fdalign_forward(ft, f0, head, x, y, spur, settings, log_p0=log_p0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up
        step(ft_only), step(fd), step(fd, cached)
    times = {"ft": [], "fd": [], "fd_cached": []}
    peaks = {}
    for _ in range(args.steps):
        times["ft"].append(step(ft_only))
        peaks.setdefault("ft", peak_mb())
        times["fd"].append(step(fd))
        peaks.setdefault("fd", peak_mb())
        times["fd_cached"].append(step(fd, cached))
    return {k: statistics.median(v) for k, v in times.items()}, peaks


def trainer_loop(model, args, device):
    from fdalign.backends import load_clip
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.config import TrainConfig
    from fdalign.train.trainer import train

    classes = [f"class {i}" for i in range(10)]
    backend = load_clip(model, pretrained=args.pretrained)
    protos = build_prototypes(
        backend,
        classes,
        [
            "a photo of a {}.",
            "a sketch of a {}.",
            "art of a {}.",
            "a {} toy.",
            "a blurry photo of a {}.",
            "a drawing of a {}.",
        ],
        spc=SPCConfig(keep=5, k=3),
        cache_dir=False,
    )
    size = backend.image_spec.size
    g = torch.Generator().manual_seed(0)
    n = args.loop_images
    ds = torch.utils.data.TensorDataset(torch.randn(n, 3, size, size, generator=g), torch.arange(n) % len(classes))
    val = torch.utils.data.TensorDataset(torch.randn(10, 3, size, size, generator=g), torch.arange(10))
    times: dict[str, list[float]] = {"ft": [], "fd": [], "fd_fill": [], "fd_cached": []}
    with tempfile.TemporaryDirectory() as tmp:

        def run(name, beta, cache, r):
            cfg = TrainConfig(
                shots=1,
                epochs=args.loop_epochs,
                batch_size=args.batch,
                lr=1e-6,
                beta=beta,
                spc_keep=5,
                spc_k=3,
                num_workers=0,
                device=str(device),
                progress=False,
                tensorboard=False,
                selection="last",
                f0_cache=cache,
            )
            b = load_clip(model, pretrained=args.pretrained)
            t0 = time.perf_counter()
            train(b, ds, val, protos, cfg, f"{tmp}/{name}{r}", data_key="benchmark" if cache else None)
            times[name].append(time.perf_counter() - t0)

        # interleaved rounds, the minimum of each kind: the runs least disturbed by the machine's other work
        for r in range(args.loop_rounds):
            run("ft", 0.0, None, r)
            run("fd", 1.0, None, r)
            run("fd_fill", 1.0, f"{tmp}/cache{r}", r)  # a new cache each round: this run fills it
            run("fd_cached", 1.0, f"{tmp}/cache{r}", r)  # and this one reads it
    return {k: min(v) for k, v in times.items()}


def eval_throughput(backend, args, device):
    from fdalign.eval.features import extract_features

    size = backend.image_spec.size
    n = args.eval_images
    ds = torch.utils.data.TensorDataset(torch.randn(n, 3, size, size), torch.zeros(n, dtype=torch.long))
    enc = backend.image_encoder.to(device)
    extract_features(enc, ds, batch_size=args.batch * 4, device=device, progress=False)  # warm-up
    t0 = time.perf_counter()
    extract_features(enc, ds, batch_size=args.batch * 4, device=device, progress=False)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default="random", help="'random' weights: speed does not depend on them")
    p.add_argument("--loop-model", default="fdalign-world", help="model for the whole-trainer comparison")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="measured steps per variant (median reported)")
    p.add_argument("--skip-core", action="store_true", help="only the trainer-loop comparison")
    p.add_argument("--loop-images", type=int, default=256)
    p.add_argument("--loop-epochs", type=int, default=2)
    p.add_argument("--loop-rounds", type=int, default=2, help="interleaved repetitions (minimum reported)")
    p.add_argument("--eval-images", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )

    from fdalign.backends import load_clip
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig

    if args.skip_core:
        return _loop_only(args, device)
    backend = load_clip(args.model, pretrained=args.pretrained if args.model != "fdalign-world" else None)
    protos = build_prototypes(
        backend,
        [f"class {i}" for i in range(10)],
        [f"a {s} photo of a {{}}." for s in ("good", "bad", "dark", "bright", "small", "big")],
        spc=SPCConfig(keep=5, k=3),
        cache_dir=False,
    )
    print(
        f"{args.model} ({args.pretrained if args.model != 'fdalign-world' else 'shipped weights'}), batch {args.batch}, {device}, {torch.get_num_threads()} threads"
    )
    med, peaks = core_steps(backend, protos, args, device)
    print(
        f"core step median of {args.steps}: fine-tune {med['ft'] * 1e3:.0f} ms, FD-Align {med['fd'] * 1e3:.0f} ms, "
        f"FD-Align with f0 cache {med['fd_cached'] * 1e3:.0f} ms"
    )
    print(f"ratio FD-Align / fine-tune step, f0 live (inference mode): {med['fd'] / med['ft']:.3f}")
    print(f"ratio FD-Align / fine-tune step, f0 cache: {med['fd_cached'] / med['ft']:.3f}")
    print(
        f"peak memory after fine-tune steps {peaks['ft']:.0f} MB, after FD-Align steps {peaks['fd']:.0f} MB "
        f"({'CUDA allocated' if device.type == 'cuda' else 'process max RSS'})"
    )
    ips = eval_throughput(backend, args, device)
    print(f"evaluation feature extraction: {ips:.1f} images/s")
    del backend
    return _loop_only(args, device)


def _loop_only(args, device) -> int:
    loop = trainer_loop(args.loop_model, argparse.Namespace(**{**vars(args), "pretrained": None}), device)
    print(
        f"trainer loop ({args.loop_model}, {args.loop_images} images x {args.loop_epochs} epochs, best of "
        f"{args.loop_rounds} interleaved rounds): "
        f"fine-tune {loop['ft']:.2f} s, FD-Align {loop['fd']:.2f} s, FD-Align filling the cache "
        f"{loop['fd_fill']:.2f} s, FD-Align reading it {loop['fd_cached']:.2f} s"
    )
    print(
        f"ratio trainer loop FD-Align / fine-tune: f0 live {loop['fd'] / loop['ft']:.3f}, "
        f"f0 cache {loop['fd_cached'] / loop['ft']:.3f}"
    )
    print(f"peak memory at the end: {peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
