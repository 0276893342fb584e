"""Entry point of the processes that tests/test_distributed.py spawns (importable by name in a child)."""

import torch

from _synth import NoisyTensors

CLASSES = ["red apple", "green leaf", "blue sky"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "art of the {}.", "a {} toy.", "a blurry {}."]


def run_training(tiny: dict, run_dir, cfg_kwargs: dict, kill_after: int | None = None):
    from fdalign.backends import load_clip
    from fdalign.prototypes import build_prototypes
    from fdalign.spc import SPCConfig
    from fdalign.train.config import TrainConfig
    from fdalign.train.trainer import train

    torch.set_num_threads(1)
    b = load_clip(None, pretrained=str(tiny["checkpoint"]), model_config=tiny["config"])
    protos = build_prototypes(b, CLASSES, TEMPLATES, spc=SPCConfig(keep=4, k=2), cache_dir=False)
    val = torch.utils.data.TensorDataset(
        torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(3)
    )

    def kill(epoch, _):
        if kill_after is not None and epoch == kill_after:
            raise KeyboardInterrupt

    try:
        return train(
            b,
            NoisyTensors(n_per_class=5, classes=3),
            val,
            protos,
            TrainConfig(**cfg_kwargs),
            run_dir,
            on_epoch_end=kill,
        )
    except KeyboardInterrupt:
        return None


def worker(
    rank: int, world: int, init_file: str, tiny: dict, run_dir: str, cfg_kwargs: dict, out: str, kill_after: int | None
):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = run_training(tiny, run_dir, cfg_kwargs, kill_after)
        if res is not None:
            torch.save({k: v.clone() for k, v in res.encoder.state_dict().items()}, f"{out}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()
