"""N-way K-shot episodes: class splits, the sampler, the heads and the interval, against hand computations."""

import csv
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _synth import class_colour, make_image
from fdalign.data.datasets import LabeledSplit, Sample
from fdalign.data.episodes import (
    EpisodeDataset,
    EpisodeSpec,
    class_pool,
    load_class_splits,
    load_target,
    sample_episode,
    sample_episodes,
)
from fdalign.errors import FDAlignError
from fdalign.eval.episodes import episode_accuracy, mean_ci, released_interval, summarize
from fdalign.heads.episodes import combined_log_probs, episode_logits, proto_logits, support_prototypes, text_logits


def _split(counts, name="s"):
    """A LabeledSplit with ``counts[c]`` fake images of class c, interleaved so indices are not grouped."""
    samples = []
    for i in range(max(counts)):
        samples += [Sample(f"c{c}/{i}.png", c) for c, n in enumerate(counts) if i < n]
    return LabeledSplit([f"class {c}" for c in range(len(counts))], samples, None, name)


def write_class_splits(root, roles: dict, per_class: int, size: int = 16, seed: int = 0):
    """``root/<role>/<class>/<i>.png`` for each role's classes (distinct colours over all classes)."""
    rng = np.random.default_rng(seed)
    every = [c for cls in roles.values() for c in cls]
    for role, cls in roles.items():
        for c in cls:
            (root / role / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_image(class_colour(every.index(c), len(every)), size, rng).save(root / role / c / f"{i}.png")
    return root


def write_mini_csv(root, roles: dict, per_class: int, missing: int = 0):
    """miniImageNet layout: ``root/images/<wnid><i>.jpg`` + ``train.csv``/``val.csv``/``test.csv``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    files = {"base": "train.csv", "val": "val.csv", "novel": "test.csv"}
    every = [c for cls in roles.values() for c in cls]
    for role, cls in roles.items():
        with (root / files[role]).open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filename", "label"])
            for c in cls:
                for i in range(per_class):
                    name = f"{c}{i:08d}.jpg"
                    w.writerow([name, c])
                    if role != "novel" or i >= missing:
                        make_image(class_colour(every.index(c), len(every)), 8, rng).save(root / "images" / name)
    return root


# ---------------------------------------------------------------------------------------------- interval


def test_interval_half_width_is_196_std_over_sqrt_n():
    acc = [40.0, 60.0, 80.0, 100.0, 53.3, 66.7, 20.0]
    m, h = mean_ci(acc)
    assert m == pytest.approx(sum(acc) / len(acc))
    assert h == pytest.approx(1.96 * statistics.stdev(acc) / math.sqrt(len(acc)))
    rm, rh = released_interval([50.0, 52.0, 49.0, 51.0, 53.0])
    assert rm == pytest.approx(51.0) and rh == pytest.approx(1.96 * statistics.stdev([50, 52, 49, 51, 53]))
    row = summarize(torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0]), runs=2)  # run 1: first 3 episodes
    assert row["run_means"] == [20.0, 50.0]
    assert row["released_ci95"] == pytest.approx(1.96 * statistics.stdev([20.0, 50.0]))


# ---------------------------------------------------------------------------------------------- sampler


def test_same_seed_same_episodes_in_any_order():
    pool = class_pool(_split([9] * 12), EpisodeSpec(5, 2, 3))
    spec = EpisodeSpec(5, 2, 3)
    a = sample_episodes(pool, spec, 7, range(20))
    b = sample_episodes(pool, spec, 7, reversed(range(20)))
    for key in ("classes", "support", "query"):
        assert np.array_equal(getattr(a, key), getattr(b, key)[::-1])
    one = sample_episode(pool, spec, 7, 13)
    assert np.array_equal(one[1], a.support[13]) and np.array_equal(one[2], a.query[13])
    c = sample_episodes(pool, spec, 8, range(20))
    assert not np.array_equal(a.support, c.support)
    assert len({tuple(x) for x in a.classes}) > 10  # episodes differ from one another


def test_support_and_query_disjoint_and_of_their_class():
    split = _split([7, 9, 8, 12, 7, 10])
    spec = EpisodeSpec(4, 3, 4)
    eps = sample_episodes(class_pool(split, spec), spec, 0, range(300))
    labels = np.asarray(split.labels)
    for e in range(len(eps)):
        assert len(set(eps.classes[e])) == 4
        s, q = set(eps.support[e].ravel()), set(eps.query[e].ravel())
        assert not s & q and len(s) == 12 and len(q) == 16
        for n in range(4):
            assert (labels[eps.support[e, n]] == eps.classes[e, n]).all()
            assert (labels[eps.query[e, n]] == eps.classes[e, n]).all()
    assert set(eps.classes.ravel()) == set(range(6))  # every eligible class gets used


def test_small_classes_skipped_with_count_or_refused():
    split = _split([10, 3, 5, 10, 2, 10])
    spec = EpisodeSpec(3, 1, 4)
    pool = class_pool(split, spec, "skip")
    assert pool.classes == [0, 2, 3, 5] and pool.skipped == [1, 4]  # class 2 has exactly K+Q
    eps = sample_episodes(pool, spec, 0, range(50))
    assert not set(eps.classes.ravel()) & {1, 4}
    with pytest.raises(FDAlignError, match=r"2 class\(es\).*fewer than K\+Q = 5.*'class 1' \(3\)"):
        class_pool(split, spec, "error")


def test_more_ways_than_classes_says_how_many_exist():
    with pytest.raises(FDAlignError, match="5-way episodes need 5 classes but 's' has 4"):
        class_pool(_split([20] * 4), EpisodeSpec(5, 1, 15))
    with pytest.raises(FDAlignError, match="with at least K\\+Q = 16 images but only 2 of the 4 classes of 's'"):
        class_pool(_split([20, 20, 5, 5]), EpisodeSpec(3, 1, 15))


# ---------------------------------------------------------------------------------------------- class splits


ROLES = {"base": ["b0", "b1", "b2", "b3"], "val": ["v0", "v1", "v2"], "novel": ["n0", "n1", "n2", "n3"]}


def test_folder_splits_and_no_base_class_in_novel_episodes(tmp_path):
    splits = load_class_splits(write_class_splits(tmp_path / "d", ROLES, per_class=4))
    assert {r: s.classnames for r, s in splits.items()} == ROLES
    novel = splits["novel"]
    spec = EpisodeSpec(3, 1, 2)
    eps = sample_episodes(class_pool(novel, spec), spec, 3, range(100))
    used = {novel.resolve(novel.samples[i]) for i in np.concatenate([eps.support.ravel(), eps.query.ravel()])}
    assert all("/novel/" in p for p in used)
    assert {novel.classnames[c] for c in eps.classes.ravel()} <= set(ROLES["novel"])


def test_minimagenet_csv_splits(tmp_path):
    roles = {"base": ["n01000001", "n01000002"], "val": ["n02000001", "n02000002"], "novel": ["n03000001", "n03000002"]}
    root = write_mini_csv(tmp_path / "mini", roles, per_class=3)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"{w} thing {i}\n" for i, w in enumerate(sum(roles.values(), []))))
    splits = load_class_splits(root, classnames=names)
    assert splits["base"].class_keys == roles["base"] and splits["novel"].classnames == ["thing 4", "thing 5"]
    assert len(splits["val"]) == 6 and splits["novel"].class_counts() == [3, 3]
    base_files = {s.path for s in splits["base"].samples}
    assert not base_files & {s.path for s in splits["novel"].samples}


def test_split_file_naming_missing_images_lists_first_few_and_total(tmp_path):
    roles = {"base": ["n01000001"], "novel": ["n03000001", "n03000002"]}
    root = write_mini_csv(tmp_path / "mini", roles, per_class=10, missing=8)
    with pytest.raises(
        FDAlignError, match=r"16 of 20 images listed in .*test.csv are missing.*first: n0300000100000000.jpg"
    ):
        load_class_splits(root)


def test_class_splits_must_be_disjoint(tmp_path):
    from _synth import make_imagefolder

    root = make_imagefolder(tmp_path / "kshot", ["x", "y"], n_train=2, n_test=2)  # train/ and test/: same classes
    with pytest.raises(FDAlignError, match=r"2 class\(es\) are in both the base and the novel split \(x, y\)"):
        load_class_splits(root)


def test_target_used_whole(tmp_path):
    from _synth import make_imagefolder

    root = make_imagefolder(tmp_path / "t", ["x", "y"], n_train=2, n_test=3, n_val=1)
    t = load_target(root, name="cub")
    assert t.name == "cub" and len(t) == 12 and t.class_counts() == [6, 6]
    assert all(t.resolve(s).startswith(str(root)) for s in t.samples)


# ---------------------------------------------------------------------------------------------- heads


def test_proto_logits_match_a_per_episode_loop():
    torch.manual_seed(0)
    e, n, k, m, d = 3, 4, 2, 5, 6
    support, query = torch.randn(e, n * k, d), torch.randn(e, m, d)
    got = proto_logits(support, query, n, 7.0)
    for a in range(e):
        for j in range(m):
            for c in range(n):
                shots = [support[a, c * k + s] / support[a, c * k + s].norm() for s in range(k)]
                p = sum(shots) / k
                want = 7.0 * torch.dot(query[a, j], p) / (query[a, j].norm() * p.norm())
                assert got[a, j, c] == pytest.approx(want.item(), abs=1e-5)
    assert torch.allclose(support_prototypes(support, n).norm(dim=-1), torch.ones(e, n))


def test_text_and_combined_heads():
    torch.manual_seed(1)
    protos, query = torch.randn(10, 6), torch.randn(2, 3, 6)
    classes = torch.tensor([[4, 0, 7], [1, 2, 9]])
    t = text_logits(query, protos, classes, 50.0)
    want = 50.0 * F.cosine_similarity(query[1, 2], protos[9], dim=0)
    assert t[1, 2, 2] == pytest.approx(want.item(), abs=1e-4)
    p = torch.randn(2, 3, 3)
    comb = combined_log_probs(p, t, 0.25)
    assert torch.allclose(comb, 0.75 * p.log_softmax(-1) + 0.25 * t.log_softmax(-1))
    assert torch.equal(
        episode_logits(
            "text", torch.randn(2, 3, 6), query, 3, class_prototypes=protos, classes=classes, text_scale=50.0
        ),
        t,
    )


def test_episode_accuracy_against_naive_loop_and_repeatable():
    torch.manual_seed(0)
    split = _split([8] * 7)
    labels = torch.tensor(split.labels)
    feats = torch.randn(7, 16)[labels] + 0.9 * torch.randn(len(split), 16)
    spec = EpisodeSpec(5, 2, 3)
    eps = sample_episodes(class_pool(split, spec), spec, 11, range(40))
    acc = episode_accuracy(feats, eps, spec, "proto", chunk=7)
    ql = np.array([n for n in range(5) for _ in range(3)])  # queries are way-major: way 0's three first
    for e in range(40):
        protos = torch.stack(
            [F.normalize(F.normalize(feats[eps.support[e, n]], dim=-1).mean(0), dim=0) for n in range(5)]
        )
        q = F.normalize(feats[eps.query[e].ravel()], dim=-1)
        right = ((q @ protos.t()).argmax(1).numpy() == ql).mean() * 100
        assert acc[e].item() == pytest.approx(right)
    again = episode_accuracy(feats, sample_episodes(class_pool(split, spec), spec, 11, range(40)), spec, "proto")
    assert torch.equal(acc, again)
    assert 0 < acc.mean() < 100


def test_episode_dataset_same_items_with_workers(tmp_path):
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    split = _split([6] * 4)
    rng = np.random.default_rng(0)
    d = tmp_path
    for s in split.samples:
        (d / s.path).parent.mkdir(parents=True, exist_ok=True)
        make_image(class_colour(s.label, 4), 12, rng).save(d / s.path)
    split.root = str(d)
    tf = T.Compose([T.RandomResizedCrop(8, scale=(0.2, 1.0)), T.ToTensor()])
    spec = EpisodeSpec(3, 1, 2)
    ds = EpisodeDataset(class_pool(split, spec), spec, 5, tf, length=6, offset=12)
    ref = [ds[j] for j in range(6)]
    for workers in (0, 2):
        got = [x for batch in DataLoader(ds, batch_size=2, num_workers=workers) for x in zip(*batch)]
        for (im_a, c_a), (im_b, c_b) in zip(ref, got):
            assert torch.equal(im_a, im_b) and torch.equal(c_a, c_b)
    assert ref[0][0].shape == (3 * 3, 3, 8, 8)
    assert not torch.equal(ref[0][0], ds[1][0])


# ---------------------------------------------------------------------------------------------- data check


def test_data_check_knows_minimagenet_sizes(tmp_path, capsys):
    from fdalign.cli import main
    from fdalign.data.check import MINIIMAGENET, ClassSplitBenchmark, check_class_splits

    assert MINIIMAGENET.classes == {"base": 64, "val": 16, "novel": 20} and MINIIMAGENET.per_class == 600
    root = write_class_splits(tmp_path / "d", {"base": ["a", "b"], "val": ["c"], "novel": ["d", "e"]}, per_class=3)
    splits = load_class_splits(root)
    exact = ClassSplitBenchmark("tiny", {"base": 2, "val": 1, "novel": 2}, 3)
    assert check_class_splits(splits, exact).ok
    off = check_class_splits(splits, ClassSplitBenchmark("tiny", {"base": 2, "val": 2, "novel": 2}, 4))
    assert ("val", "1 classes but tiny has 2") in off.problems
    assert ("novel", "2 class(es) without 4 images: d (3), e (3)") in off.problems
    assert main(["data", "check", str(root), "--no-progress"]) == 0
    assert main(["data", "check", str(root), "--benchmark", "miniImageNet", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "base   2 classes but miniImageNet has 64" in out and "novel  2 classes but miniImageNet has 20" in out


def test_evaluate_episodes_reuses_features_and_each_models_scale(tmp_path):
    """Encoding only the used images (re-indexed) gives the accuracies of scoring on the whole split's
    features; a model's ProtoNet scale reaches the combined head (tiny -> text decides, huge -> proto)."""
    from torchvision import transforms as T

    from _synth import make_imagefolder
    from fdalign.data.datasets import ImageDataset
    from fdalign.eval.episodes import EpisodeEvalSettings, EpisodeTarget, evaluate_episodes, plan_episodes, used_samples
    from fdalign.eval.features import extract_features

    split = load_target(make_imagefolder(tmp_path / "t", [f"k{i}" for i in range(6)], 0, 12, size=8), name="t")
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16))
    protos = torch.randn(6, 16)
    spec = EpisodeSpec(3, 1, 2)
    settings = EpisodeEvalSettings(specs=[spec], episodes=8, seed=4, heads=("proto", "text", "combined"))
    assert len(used_samples(plan_episodes(split, settings))) < len(split)  # only some images get encoded
    metrics, skipped = evaluate_episodes(
        {"small": (enc, 1e-6), "large": (enc, 1e6)},
        [EpisodeTarget("t", split, protos)],
        settings,
        transform=T.ToTensor(),
    )
    m = metrics["t"]["3-way 1-shot"]
    feats, _ = extract_features(enc, ImageDataset(split, T.ToTensor()), progress=False)
    eps = sample_episodes(class_pool(split, spec), spec, 4, range(8))
    for head in ("proto", "text"):
        want = episode_accuracy(feats, eps, spec, head, class_prototypes=protos).mean().item()
        assert m["small"][head]["mean"] == pytest.approx(want, abs=1e-4)
    assert m["small"]["combined"]["mean"] == pytest.approx(m["small"]["text"]["mean"])
    assert m["large"]["combined"]["mean"] == pytest.approx(m["large"]["proto"]["mean"])
    assert m["small"]["text"]["mean"] != m["small"]["proto"]["mean"] and skipped == {"t": {"3-way 1-shot": 0}}
