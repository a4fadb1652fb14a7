"""The config reference comes from the schema: descriptions, the README table, the commented YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from dits.config import RunConfig, Section, load_config, validate_config
from dits.config_docs import (
    BEGIN,
    END,
    REGENERATE,
    commented_yaml,
    main,
    render_table,
    replace_table,
    short_value,
    table_rows,
    walk,
)
from dits.errors import DitsError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_readme_config_table_matches_the_schema() -> None:
    text = (REPO / "README.md").read_text()
    assert replace_table(text, render_table()) == text, (
        f"README.md's config table differs from the schema in src/dits/config.py; regenerate it: {REGENERATE}"
    )


def test_every_field_of_every_section_has_a_one_line_description() -> None:
    assert len(Section.__subclasses__()) >= 14
    bad = [
        f"{cls.__name__}.{name}"
        for cls in Section.__subclasses__()
        for name, info in cls.model_fields.items()
        if not (info.description or "").strip() or "\n" in info.description
    ]
    assert not bad, f"fields without a one-line Field(description=...): {bad}"


def test_table_has_one_row_per_key_and_merges_sft_with_dpo() -> None:
    rows = {key: (default, description) for key, default, description in table_rows()}
    leaves = {".".join(e.path) for e in walk(RunConfig()) if not e.is_section}
    listed = {key.strip("`").replace("{sft,dpo}", "sft") for key in rows if not key.startswith("**")}
    assert listed == {key for key in leaves if not key.startswith("dpo.")}
    assert rows["`{sft,dpo}.learning_rate`"][0] == "sft: `2e-4`, dpo: `5e-5`"
    assert rows["`{sft,dpo}.beta`"] == ("`0.1`", "DPO only: the KL weight β")
    assert rows["`dialogue.max_turns`"] == ("`6`", "turn cap (Optima: 10)")
    assert rows["`engine.device`"][0] == "`null`"
    assert rows["`{sft,dpo}.lora_settings.target_modules`"][0] == "`[q_proj, k_proj, …, down_proj] (7 items)`"
    sections = [key.strip("*`") for key in rows if key.startswith("**")]
    assert sections[:3] == ["task", "engine", "dialogue"]
    assert (
        sections.index("{sft,dpo}") < sections.index("{sft,dpo}.lora_settings") < sections.index("influence")
    )
    assert sections[-2:] == ["eval", "distributed"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "null"),
        (True, "true"),
        (0.25, "0.25"),
        (5e-5, "5e-5"),
        (2048.0, "2048.0"),
        (123456789.0, "123456789.0"),
        ("hf", "hf"),
        ({}, "{}"),
        ({"steps": 2}, "{steps: 2}"),
        ([1e-4, 1e-2], "[1e-4, 0.01]"),
        (list("abcdefghijklmnopqrstuvwxyz"), "[a, b, …, z] (26 items)"),
    ],
)
def test_short_value(value, text) -> None:
    assert short_value(value) == text


def test_replace_table_keeps_the_text_around_the_markers(tmp_path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{BEGIN}\n| old |\n{END}\n\n**Ablation switches.** kept\n")
    main(["--write", str(readme)])
    text = readme.read_text()
    assert text.startswith(f"# intro\n\n{BEGIN}\n| key | default | meaning |\n")
    assert text.endswith(f"|\n{END}\n\n**Ablation switches.** kept\n")
    assert "| old |" not in text
    main(["--write", str(readme)])
    assert readme.read_text() == text
    with pytest.raises(DitsError, match="markers"):
        replace_table("no markers here", render_table())


def awkward_config() -> RunConfig:
    return validate_config(
        {
            "model": "some folder/" + "a long model name " * 8,
            "task": {
                "name": "synth-debate",
                "data_files": {"test": "data/my test.jsonl"},
                "options": {
                    "steps": 2,
                    "note": "two\nlines: [x]",
                    "kinds": ["a", "b"],
                    "nested": {"k": None},
                },
            },
            "engine": {"device": "cuda:1"},
            "influence": {"probe_lr": 3e-4, "probe_lr_grid": [1e-4]},
            "eval": {"limit": None},
        }
    )


@pytest.mark.parametrize(
    "config",
    [RunConfig(), awkward_config(), *(load_config(path) for path in CONFIGS)],
    ids=["defaults", "awkward", *(path.name for path in CONFIGS)],
)
def test_commented_yaml_reads_back_to_the_same_config(config, tmp_path) -> None:
    path = tmp_path / "shown.yaml"
    path.write_text(commented_yaml(config))
    assert load_config(path) == config


def test_commented_yaml_has_every_description_above_its_key() -> None:
    lines = commented_yaml(RunConfig()).splitlines()
    at = 0
    for entry in walk(RunConfig()):
        indent = "  " * (len(entry.path) - 1)
        at = lines.index(f"{indent}# {entry.description}", at) + 1
        assert lines[at].startswith(f"{indent}{entry.path[-1]}:"), entry.path
