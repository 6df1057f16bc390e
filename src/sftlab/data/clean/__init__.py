"""Data cleaning on the canonical conversations, before rendering: validate, deduplicate (exact and near),
filter, decontaminate against eval sets, select under a budget. Every removed record is counted with its
operator and reason (records in == kept + removed, per source).

- records.py: sources -> ``Records`` (prompt / response views of each conversation)
- text.py: normalised words, word ids, hashed word n-grams
- filters.py, dedup.py, decontaminate.py, select.py: the operators (pure functions over arrays / texts)
- apply.py: the pass (operators in order) -> ``CleanResult`` (removals + ``CleanReport``)
- output.py: ``sftlab data clean``: kept.jsonl, removed.jsonl, report.json and the printed table
"""

from sftlab.data.clean.apply import CleanResult, clean_records, clean_sources
from sftlab.data.clean.records import Records, load_records
from sftlab.data.clean.report import CleanReport

__all__ = ["CleanReport", "CleanResult", "Records", "clean_records", "clean_sources", "load_records"]
