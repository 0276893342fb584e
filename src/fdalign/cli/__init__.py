"""The ``fdalign`` command line.

Each sub-command lives in its own module exposing ``register(subparsers)``, which adds its parser
and sets ``func``. Modules keep heavy imports (torch, open_clip) inside their ``run`` function so
that ``fdalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

from fdalign import __version__
from fdalign.errors import FDAlignError, as_command, user_message  # noqa: F401 (for callers of the CLI)

# Order here is the order in `fdalign --help`.
COMMAND_MODULES = [
    "fdalign.cli.demo",
    "fdalign.cli.train",
    "fdalign.cli.meta",
    "fdalign.cli.evaluate",
    "fdalign.cli.prototypes",
    "fdalign.cli.data",
    "fdalign.cli.world",
    "fdalign.cli.sweep",
    "fdalign.cli.report",
    "fdalign.cli.export",
    "fdalign.cli.predict",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every option's default and keeps hand-wrapped descriptions."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):  # the help already says its default in words: say it once
            return action.help
        return super()._get_help_string(action)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model / --pretrained / --model-config: the arguments of :func:`fdalign.backends.load_clip`."""
    parser.add_argument(
        "--model",
        default=None,
        help="CLIP model: an open_clip name (ViT-B-32), "
        "'hf:<repo or dir>', a built-in model (fdalign-world); optional with --model-config "
        "(the name is then the JSON file's stem)",
    )
    parser.add_argument(
        "--pretrained",
        default=None,
        help="open_clip pretrained tag (openai, laion2b_s34b_b79k, ...) or checkpoint path for --model",
    )
    parser.add_argument("--model-config", default=None, help="open_clip model-config JSON for a custom architecture")


def add_encoding_arguments(parser: argparse.ArgumentParser, batch_size: int = 256) -> None:
    """--batch-size / --num-workers / --device / --precision: how a command encodes images."""
    parser.add_argument("--batch-size", type=int, default=batch_size, help="images per encoder forward pass")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for image decoding")
    parser.add_argument(
        "--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1, ..."
    )
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="autocast precision of the image encoder on CUDA (CPU always runs fp32)",
    )


def add_switches(parser: argparse.ArgumentParser, cache: bool = True) -> None:
    """--no-cache (the prompt-feature cache, when the command encodes prompts) / --no-progress."""
    if cache:
        parser.add_argument("--no-cache", action="store_true", help="do not read or write the prompt-feature cache")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fdalign",
        description="FD-Align: few-shot fine-tuning of CLIP that keeps out-of-distribution robustness.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fdalign {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a command not written yet must not break the others
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return as_command(args.command, lambda: args.func(args))
