"""Node help pages (web/docs/<node id>.md) against the node schemas.

The frontend's node help panel shows these pages; each lists every input and output of its
node in a table with the type, default and range, and these tests keep the tables equal to
the schemas.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
DOCS = REPOSITORY / "web" / "docs"
NO_VALUE = "–"


def node_schemas(pack) -> list:
    extension = asyncio.run(pack.comfy_entrypoint())
    return [cls.GET_SCHEMA() for cls in asyncio.run(extension.get_node_list())]


def markdown_table(text: str, heading: str) -> list[list[str]]:
    """Return the body rows of the first table under `## heading`, cells stripped of backticks."""
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip().replace("`", "") for cell in row.strip("|").split("|")] for row in rows[2:]]


# Stand-in input and output classes by "in:TYPE" and "out:TYPE", filled by the io_classes fixture.
IO_CLASSES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def io_classes(pack_module):
    io = pack_module("nodes.extension").io
    kinds = (io.Model, io.Conditioning, io.Image, io.Mask, io.Latent, io.Int, io.Float, io.String, io.Boolean, io.Combo)
    IO_CLASSES.clear()
    IO_CLASSES.update({f"in:{kind.io_type}": kind.Input for kind in kinds})
    IO_CLASSES.update({f"out:{kind.io_type}": kind.Output for kind in kinds})


def type_of(item) -> str:
    return next(key.split(":", 1)[1] for key, cls in IO_CLASSES.items() if isinstance(item, cls))


def number_text(value) -> str:
    """Write a number as the tables do: integers plainly, floats with at least one decimal."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.1f}" if value == round(value, 1) else str(value)


def default_text(item) -> str:
    default = item.options.get("default")
    if default is None:
        return NO_VALUE
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (int, float)):
        return number_text(default)
    return str(default)


def test_every_node_has_a_help_page(pack):
    missing = [schema.node_id for schema in node_schemas(pack) if not (DOCS / f"{schema.node_id}.md").is_file()]
    assert missing == []


def test_help_page_title_is_display_name(pack):
    for schema in node_schemas(pack):
        first_line = (DOCS / f"{schema.node_id}.md").read_text(encoding="utf-8").splitlines()[0]
        assert first_line == f"# {schema.display_name}"


def test_nodes_have_search_aliases(pack):
    for schema in node_schemas(pack):
        aliases = schema.fields.get("search_aliases", [])
        assert "l2p" in aliases, schema.node_id
        assert len(aliases) >= 3, schema.node_id


def test_input_tables_match_schemas(pack):
    for schema in node_schemas(pack):
        rows = markdown_table((DOCS / f"{schema.node_id}.md").read_text(encoding="utf-8"), "Inputs")
        documented = {row[0]: row for row in rows}
        assert list(documented) == [item.id for item in schema.inputs], schema.node_id
        for item in schema.inputs:
            name, kind, default, value_range, meaning = documented[item.id]
            where = f"{schema.node_id}.{name}"
            assert kind == type_of(item), where
            assert meaning, where
            if name == "model_name":  # its options are the installed files
                continue
            assert default == default_text(item), where
            if kind in ("INT", "FLOAT"):
                assert value_range.startswith(
                    f"{number_text(item.options['min'])}–{number_text(item.options['max'])}"
                ), where
            if kind == "COMBO":
                assert [option for option in item.options["options"] if option not in value_range] == [], where


def test_output_tables_match_schemas(pack):
    for schema in node_schemas(pack):
        rows = markdown_table((DOCS / f"{schema.node_id}.md").read_text(encoding="utf-8"), "Outputs")
        assert [(row[0], row[1]) for row in rows] == [(type_of(out), type_of(out)) for out in schema.outputs]
        assert all(row[2] for row in rows), schema.node_id


def test_screenshots_are_outside_the_help_folder():
    """The frontend reads web/docs/<node id>.md; workflow screenshots live in docs/screenshots/."""
    assert [path.name for path in DOCS.iterdir() if path.suffix != ".md"] == []
