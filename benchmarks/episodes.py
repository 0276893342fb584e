"""5-way 1-shot episodes per second: cached features vs encoding each episode's images afresh, in one run.

Both ways score the same episodes (sampled on indices from one seed) with the ProtoNet head:

* cached (fdalign): every image the episodes read is decoded and encoded once
  (:func:`fdalign.eval.extract_features`), then the episodes are sampled and scored in chunks of
  many episodes, one gather + one batched matmul per chunk (:func:`fdalign.eval.episodes.episode_accuracy`);
* naive: per episode, decode and encode its N*(K+Q) images, then score that one episode.

The rate on cached features counts sampling + scoring; the one-off encoding is timed separately and
the end-to-end rate (encoding included) is printed too. The naive rate is measured on the first
``--naive`` episodes, whose accuracies must equal the cached ones. Images are generated PNGs; the
encoder is the built-in fdalign-world model (64 px ViT) unless --model-config is given.

    python benchmarks/episodes.py [--episodes 2000] [--classes 20] [--per-class 60] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _synth import class_colour, make_image  # noqa: E402
from fdalign.backends import load_clip  # noqa: E402
from fdalign.data.datasets import ImageDataset, load_imagefolder  # noqa: E402
from fdalign.data.episodes import Episodes, EpisodeSpec, class_pool, sample_episodes  # noqa: E402
from fdalign.eval.episodes import episode_accuracy  # noqa: E402
from fdalign.eval.features import extract_features  # noqa: E402


def make_split(root: Path, classes: int, per_class: int, size: int):
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class_{c:03d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            make_image(class_colour(c, classes), size, rng, noise=60.0).save(d / f"{i:04d}.png")
    return next(iter(load_imagefolder(root).values()))


def encode_once(encoder, split, transform, batch_size):
    t0 = time.perf_counter()
    feats, _ = extract_features(encoder, ImageDataset(split, transform), batch_size=batch_size, progress=False)
    return feats, time.perf_counter() - t0


def cached(feats, split, spec, episodes, seed):
    t0 = time.perf_counter()
    eps = sample_episodes(class_pool(split, spec), spec, seed, range(episodes))
    t_sample = time.perf_counter() - t0
    acc = episode_accuracy(feats, eps, spec, "proto")
    return acc, t_sample, time.perf_counter() - t0 - t_sample


@torch.no_grad()
def naive(encoder, split, transform, spec, episodes, seed):
    encoder.eval()
    ds = ImageDataset(split, transform)
    pool = class_pool(split, spec)
    accs = []
    t0 = time.perf_counter()
    for i in range(episodes):
        eps = sample_episodes(pool, spec, seed, [i])
        ids = np.concatenate([eps.support.ravel(), eps.query.ravel()])
        feats = encoder(torch.stack([ds[int(j)][0] for j in ids]))
        local = np.arange(len(ids))
        one = Episodes(
            eps.classes,
            local[: eps.support.size].reshape(eps.support.shape),
            local[eps.support.size :].reshape(eps.query.shape),
            eps.index,
        )
        accs.append(episode_accuracy(feats, one, spec, "proto"))
    return torch.cat(accs), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=2000, help="episodes on cached features")
    ap.add_argument("--naive", type=int, default=20, help="episodes encoded afresh (the slow way)")
    ap.add_argument("--classes", type=int, default=20, help="classes of the generated split (miniImageNet novel: 20)")
    ap.add_argument("--per-class", type=int, default=60, help="images per class")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument(
        "--model-config", default=None, help="open_clip model-config JSON (random weights) instead of fdalign-world"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    backend = (
        load_clip("fdalign-world") if args.model_config is None else load_clip(None, model_config=args.model_config)
    )
    size = backend.image_spec.size if isinstance(backend.image_spec.size, int) else backend.image_spec.size[0]
    spec, seed = EpisodeSpec(5, 1, 15), 0
    tf = backend.preprocess_eval()
    with tempfile.TemporaryDirectory() as tmp:
        split = make_split(Path(tmp) / "data", args.classes, args.per_class, size)
        feats, t_encode = encode_once(backend.image_encoder, split, tf, 256)
        acc, t_sample, t_score = cached(feats, split, spec, args.episodes, seed)
        torch.set_num_threads(1)  # small ops on a busy shared CPU: one thread can beat two
        _, t_sample1, t_score1 = cached(feats, split, spec, args.episodes, seed)
        torch.set_num_threads(args.threads)
        acc_naive, t_naive = naive(backend.image_encoder, split, tf, spec, args.naive, seed)

    assert torch.allclose(acc[: args.naive], acc_naive), "cached and naive accuracies differ"
    rate_cached = args.episodes / (t_sample + t_score)
    rate_e2e = args.episodes / (t_encode + t_sample + t_score)
    rate_naive = args.naive / t_naive
    print(
        f"model {backend.name}, {size}px; split {args.classes} classes x {args.per_class} images; "
        f"{spec.name}, {spec.q_query} queries; torch threads {args.threads}"
    )
    print(f"encode all {len(split)} images once:           {t_encode:8.2f} s")
    print(f"cached: sample {args.episodes} episodes          {t_sample:8.3f} s")
    print(f"cached: score  {args.episodes} episodes          {t_score:8.3f} s")
    print(f"cached features:        {rate_cached:10.0f} episodes/s (sampling + scoring, {args.threads} threads)")
    print(f"cached features:        {args.episodes / (t_sample1 + t_score1):10.0f} episodes/s (1 thread)")
    print(f"cached, encoding incl.: {rate_e2e:10.1f} episodes/s (for {args.episodes} episodes)")
    print(f"naive (encode per episode): {rate_naive:6.2f} episodes/s over {args.naive} episodes")
    print(f"ratio cached / naive: {rate_cached / rate_naive:.0f}x; end-to-end / naive: {rate_e2e / rate_naive:.1f}x")
    print(
        f"mean accuracy over the {args.episodes} episodes: {acc.mean():.2f}% (naive = cached on the first {args.naive}: yes)"
    )


if __name__ == "__main__":
    main()
