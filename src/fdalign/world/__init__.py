"""The embedded world: offline captioned synthetic images and the shipped ``fdalign-world`` CLIP.

``generator`` draws the images and captions, ``dataset`` wraps them as a torch ``Dataset`` and
``pretrain`` is the reproducible script that trained ``fdalign/assets/fdalign-world.*``.
"""

from fdalign.world.generator import (
    CLASSES,
    ID_STYLE,
    STYLE_TEMPLATES,
    STYLES,
    WorldBatch,
    render,
    render_grid,
    render_items,
)

__all__ = [
    "CLASSES", "ID_STYLE", "STYLES", "STYLE_TEMPLATES", "WorldBatch", "WorldDataset",
    "render", "render_grid", "render_items",
]  # fmt: skip


def __getattr__(name):
    # WorldDataset needs torch; keep `import fdalign.world` light for the CLI.
    if name == "WorldDataset":
        from fdalign.world.dataset import WorldDataset

        return WorldDataset
    raise AttributeError(name)
