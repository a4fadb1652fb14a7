"""The config reference, generated from the schema in `dits.config` (its ``Field`` descriptions).

Two renderings: the markdown table in the README (between the ``config-table`` marker comments) and a
resolved config as YAML with each key's description as a comment (``dits config show``).

Regenerate the README table with ``python -m dits.config_docs --write README.md``.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from dits.config import RunConfig
from dits.errors import DitsError

BEGIN = "<!-- config-table:begin -->"
END = "<!-- config-table:end -->"
REGENERATE = "python -m dits.config_docs --write README.md"
MAX_LIST_CHARS = 40  # a longer list default is shown as its first two items, …, its last


@dataclass(frozen=True)
class Entry:
    """One key of a config: its dotted path, description and value (as `dump_config` writes it)."""

    path: tuple[str, ...]
    description: str
    value: Any
    is_section: bool


def walk(model: BaseModel, prefix: tuple[str, ...] = ()) -> Iterator[Entry]:
    """Every key of ``model`` in schema order, depth first: a section comes right before its keys."""
    data = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        is_section = isinstance(value, BaseModel)
        yield Entry(prefix + (name,), info.description or "", data[name], is_section)
        if is_section:
            yield from walk(value, prefix + (name,))


# --------------------------------------------------------------------------------------- YAML
def commented_yaml(config: RunConfig) -> str:
    """``config`` as block YAML with each key's description in a comment line above it.

    The values are those `dits.config.dump_config` writes, so `dits.config.load_config` reads the text
    back to the same config.
    """
    lines = []
    for entry in walk(config):
        indent = "  " * (len(entry.path) - 1)
        name = entry.path[-1]
        if entry.is_section and len(entry.path) == 1:
            lines.append("\n")
        lines.append(f"{indent}# {entry.description}\n")
        if entry.is_section:
            lines.append(f"{indent}{name}:\n")
        else:
            lines.append(textwrap.indent(yaml.safe_dump({name: entry.value}, sort_keys=False), indent))
    return "".join(lines)


# --------------------------------------------------------------------------------------- table
def short_value(value: Any) -> str:
    """A default as short YAML-like text: ``null``, ``true``, ``0.25``, ``5e-5``, ``[a, b, …, z] (7 items)``."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        scientific = f"{Decimal(repr(value)).normalize():e}".replace("e+", "e")
        return min(repr(value), scientific, key=len)
    if isinstance(value, list):
        items = [short_value(item) for item in value]
        text = f"[{', '.join(items)}]"
        if len(text) > MAX_LIST_CHARS:
            text = f"[{items[0]}, {items[1]}, …, {items[-1]}] ({len(items)} items)"
        return text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {short_value(item)}" for key, item in value.items()) + "}"
    return str(value)


def _twins(config: RunConfig) -> dict[str, list[str]]:
    """Top-level sections that share one section model (``sft``, ``dpo``): each name → all of them."""
    by_model: dict[type, list[str]] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            by_model.setdefault(type(value), []).append(name)
    return {name: names for names in by_model.values() for name in names}


def _merge(heads: list[str], texts: list[str], sep: str) -> str:
    """One text if all agree, else each with its section's name: ``sft: a, dpo: b``."""
    if len(set(texts)) == 1:
        return texts[0]
    return sep.join(f"{head}: {text}" for head, text in zip(heads, texts, strict=True))


def _cell(text: str) -> str:
    """``text`` safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def table_rows() -> list[tuple[str, str, str]]:
    """(key, default, description) markdown cells, one row per config key, defaults as values.

    Sections get a bold row of their own. Top-level sections of the same model (``sft``, ``dpo``) share
    their rows: the key reads ``{sft,dpo}.learning_rate`` and differing defaults are shown per section.
    """
    config = RunConfig()
    entries = {entry.path: entry for entry in walk(config)}
    twins = _twins(config)
    rows = []
    for path, entry in entries.items():
        heads = twins.get(path[0], [path[0]])
        if path[0] != heads[0]:
            continue
        group = [entries[(head,) + path[1:]] for head in heads]
        head = heads[0] if len(heads) == 1 else "{" + ",".join(heads) + "}"
        key = ".".join((head, *path[1:]))
        description = _merge(heads, [member.description for member in group], "; ")
        if entry.is_section:
            rows.append((f"**`{key}`**", "", _cell(description)))
        else:
            default = _merge(heads, [f"`{short_value(member.value)}`" for member in group], ", ")
            rows.append((f"`{key}`", _cell(default), _cell(description)))
    return rows


def render_table() -> str:
    """The markdown reference table of every config key with its default and meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    lines += [f"| {key} | {default} | {description} |" for key, default, description in table_rows()]
    return "\n".join(lines) + "\n"


def replace_table(text: str, table: str) -> str:
    """``text`` (the README) with everything between the two marker comments replaced by ``table``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise DitsError(f"the README needs the markers {BEGIN} and {END} (in this order) around the table")
    return f"{text[: start + len(BEGIN)]}\n{table}{text[end:]}"


def main(argv: list[str] | None = None) -> None:
    """Print the config table, or write it into a README between the marker comments."""
    parser = argparse.ArgumentParser(prog="python -m dits.config_docs", description=__doc__)
    parser.add_argument("--write", type=Path, metavar="README", help="replace the table in this file")
    args = parser.parse_args(argv)
    table = render_table()
    if args.write is None:
        print(table, end="")
        return
    args.write.write_text(replace_table(args.write.read_text(), table))
    print(f"{args.write}: config table regenerated")


if __name__ == "__main__":
    main()
