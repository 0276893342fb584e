"""Prompt templates and class names.

A template is a string with exactly one ``{}`` where the class name goes. FD-Align uses the same
templates twice: averaged over templates they give the class prototypes, averaged over classes they
give the spurious (template-only) prototypes, so the template set is part of the method.

Built-in sets:

* ``openai80`` - the 80 ImageNet templates from the CLIP paper's prompt-engineering notebook, which
  the FD-Align authors use for every data set.
* ``tip7`` - the 7-template ImageNet ensemble used by Tip-Adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fdalign.errors import FDAlignError

OPENAI80: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TIP7: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"openai80": OPENAI80, "tip7": TIP7}

PLACEHOLDER = "{}"


def _read_lines(path: Path, what: str) -> list[str]:
    try:
        # utf-8-sig: files saved by some editors start with a byte-order mark
        return path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise FDAlignError(f"cannot read {what} file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise FDAlignError(f"{what} file {path} is not UTF-8 text; save it as UTF-8") from None


def load_templates(spec: str) -> list[str]:
    """Templates from a built-in set name or from a text file.

    A file holds one template per line; blank lines and lines starting with ``#`` are ignored and
    every other line must contain exactly one ``{}``.

    Raises:
        FDAlignError: ``spec`` is neither a set name nor a file, or a line of the file is invalid.
    """
    if spec in TEMPLATE_SETS:
        return list(TEMPLATE_SETS[spec])
    path = Path(spec).expanduser()
    if not path.is_file():
        names = ", ".join(TEMPLATE_SETS)
        raise FDAlignError(
            f"templates {spec!r} is neither a built-in set ({names}) nor an existing file; "
            "pass one of those names or a text file with one template per line, each containing '{}'"
        )
    templates: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(_read_lines(path, "templates"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        n = line.count(PLACEHOLDER)
        if n != 1:
            raise FDAlignError(
                f"{path}:{lineno}: template {line!r} contains {n} '{{}}' placeholders; "
                "each template needs exactly one '{}' where the class name goes"
            )
        if line in first_line:
            raise FDAlignError(
                f"{path}:{lineno}: template {line!r} repeats line {first_line[line]}; "
                "remove the duplicate (it would silently weight that template twice)"
            )
        first_line[line] = lineno
        templates.append(line)
    if not templates:
        raise FDAlignError(f"templates file {path} holds no templates (only blank or '#' lines)")
    return templates


def format_prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All ``C * M`` prompts in class-major order: prompt ``c * M + j`` is ``templates[j]`` with
    ``classnames[c]``, so the encoded ``[C*M, D]`` features reshape to ``[C, M, D]``."""
    # replace, not str.format: a user template may legitimately contain other braces
    return [t.replace(PLACEHOLDER, name) for name in classnames for t in templates]


def load_classnames(path: str | Path) -> list[str]:
    """Class names, one per line; line ``i`` (0-based) is label ``i``.

    Trailing blank lines are ignored; a blank line in the middle or a repeated name is an error
    because it would silently shift or merge labels.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FDAlignError(f"classes file {path} does not exist; give a text file with one class name per line")
    lines = [line.strip() for line in _read_lines(path, "classes")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise FDAlignError(f"classes file {path} is empty; write one class name per line")
    first_line: dict[str, int] = {}
    for lineno, name in enumerate(lines, start=1):
        if not name:
            raise FDAlignError(f"{path}:{lineno}: blank line between class names; remove it (line i is label i-1)")
        if name in first_line:
            raise FDAlignError(
                f"{path}:{lineno}: class name {name!r} repeats line {first_line[name]}; class names must be unique"
            )
        first_line[name] = lineno
    return lines
