"""Template sets, template files, prompt formatting and class-name files."""

from __future__ import annotations

import pytest

from fdalign.errors import FDAlignError
from fdalign.prompts import TEMPLATE_SETS, format_prompts, load_classnames, load_templates


def test_builtin_sets():
    openai80, tip7 = TEMPLATE_SETS["openai80"], TEMPLATE_SETS["tip7"]
    assert len(openai80) == 80 and len(set(openai80)) == 80
    assert len(tip7) == 7 and len(set(tip7)) == 7
    for t in (*openai80, *tip7):
        assert t.count("{}") == 1, t
    # Tip-Adapter's ensemble is a subset of the CLIP ImageNet templates
    assert set(tip7) <= set(openai80)
    assert openai80[0] == "a bad photo of a {}." and openai80[-1] == "a tattoo of the {}."
    assert tip7[0] == "itap of a {}." and tip7[-1] == "a photo of the small {}."


def test_load_templates_by_name_returns_a_fresh_list():
    t = load_templates("tip7")
    t.append("x {}")
    assert load_templates("tip7") == list(TEMPLATE_SETS["tip7"])


def test_load_templates_file_skips_blank_and_comment_lines(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# my templates\n\n  a photo of a {}.  \n# another comment\nart of the {}.\n\n")
    assert load_templates(str(f)) == ["a photo of a {}.", "art of the {}."]


@pytest.mark.parametrize("bad", ["a photo of a thing.", "a {} next to a {}."])
def test_bad_template_names_file_line_and_text(tmp_path, bad):
    f = tmp_path / "t.txt"
    f.write_text(f"# header\na photo of a {{}}.\n{bad}\n")
    with pytest.raises(FDAlignError) as e:
        load_templates(str(f))
    msg = str(e.value)
    assert f"{f}:3" in msg and bad in msg


def test_duplicate_template_is_an_error(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a {}.\nthe {}.\na {}.\n")
    with pytest.raises(FDAlignError, match=r":3: .*repeats line 1"):
        load_templates(str(f))


def test_template_file_without_templates(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("# nothing\n\n")
    with pytest.raises(FDAlignError, match="no templates"):
        load_templates(str(f))


def test_unknown_set_lists_names(tmp_path):
    with pytest.raises(FDAlignError) as e:
        load_templates(str(tmp_path / "openai81"))
    assert "openai80" in str(e.value) and "tip7" in str(e.value)


def test_format_prompts_class_major():
    classes = ["cat", "dog", "sea {x} lion"]
    templates = ["a {}.", "the {}!", "{} {art}"]
    prompts = format_prompts(classes, templates)
    assert len(prompts) == 9
    for c, name in enumerate(classes):
        for j, t in enumerate(templates):
            assert prompts[c * 3 + j] == t.split("{}")[0] + name + t.split("{}")[1]
    assert prompts[5] == "dog {art}"  # other braces are left alone


def test_load_classnames(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("\ufeffcat\n  dog \nsea lion\n\n\n")
    assert load_classnames(f) == ["cat", "dog", "sea lion"]


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("cat\n\ndog\n", r":2: blank line"),
        ("cat\ndog\ncat\n", r":3: class name 'cat' repeats line 1"),
        ("\n\n", r"is empty"),
    ],
)
def test_load_classnames_errors(tmp_path, text, pattern):
    f = tmp_path / "c.txt"
    f.write_text(text)
    with pytest.raises(FDAlignError, match=pattern):
        load_classnames(f)


def test_missing_classnames_file(tmp_path):
    with pytest.raises(FDAlignError, match="does not exist"):
        load_classnames(tmp_path / "nope.txt")
