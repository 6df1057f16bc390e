"""The README's config reference is generated from the config classes and must stay in sync."""

from pathlib import Path

from sftlab.config import reference_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    block = text[text.index(start) + len(start) : text.index(end)].strip()
    assert block == reference_markdown().strip(), "run: python tools/update_readme_reference.py"
