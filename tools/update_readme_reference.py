"""Regenerate the config reference block in README.md from the config classes."""

from pathlib import Path

from sftlab.config import reference_markdown

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text(encoding="utf-8")
start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
text = text[: text.index(start) + len(start)] + "\n" + reference_markdown() + "\n" + text[text.index(end) :]
readme.write_text(text, encoding="utf-8")
print("README.md config reference updated")
