"""Helpers of the report tests: read metrics.jsonl, parse report.html into sections, series and table rows."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


class ReportParser(HTMLParser):
    """Sections of report.html with their chart series (``data-*``) and table rows (cell text, data-value)."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.order: list[str] = []
        self.cur: dict | None = None
        self.row: list | None = None
        self.td: list | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.cur = {"series": [], "rows": [], "h2": None, "text": []}
            self.sections[a["id"]] = self.cur
            self.order.append(a["id"])
        if self.cur is None:
            return
        if tag == "g" and a.get("class") == "series":
            self.cur["series"].append(
                {
                    "label": a["data-label"],
                    "x": json.loads(a["data-x"]) if "data-x" in a else None,
                    "y": json.loads(a["data-y"]),
                }
            )
        elif tag == "tr":
            self.row = []
            self.cur["rows"].append(self.row)
        elif tag in ("td", "th") and self.row is not None:
            self.td = ["", a.get("data-value"), tag]
            self.row.append(self.td)

    def handle_endtag(self, tag):
        if tag == "section":
            self.cur = None
        elif tag in ("td", "th"):
            self.td = None

    def handle_data(self, data):
        if self.td is not None:
            self.td[0] += data
        if self.cur is not None:
            self.cur["text"].append(data)

    def series(self, section: str, label: str) -> dict:
        found = [s for s in self.sections[section]["series"] if s["label"] == label]
        assert len(found) == 1, (label, [s["label"] for s in self.sections[section]["series"]])
        return found[0]

    def rows(self, section: str, first: str) -> list[list]:
        """Data rows of a section whose first cell text is ``first``."""
        return [r for r in self.sections[section]["rows"] if r and r[0][2] == "td" and r[0][0].strip() == first]

    def text(self, section: str) -> str:
        return "".join(self.sections[section]["text"])


def parse_report(html: str) -> ReportParser:
    p = ReportParser()
    p.feed(html)
    return p
