"""The README models table is the registry's: regenerate it with
``python -m pulid_core.models table`` and paste it between the markers."""

from pathlib import Path

from pulid_core.models import markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- models-table:start -->", "<!-- models-table:end -->"


def test_readme_models_table_matches_registry():
    text = README.read_text(encoding="utf-8")
    assert text.count(START) == 1 and text.count(END) == 1, f"README.md needs one {START} ... {END} block"
    block = text.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == markdown_table().strip(), (
        "README models table is stale: replace the block with the output of "
        "`python -m pulid_core.models table`"
    )
