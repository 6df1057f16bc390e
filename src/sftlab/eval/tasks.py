"""Tasks from the config: load their items (the scorers of each kind are in eval/kinds.py)."""

from __future__ import annotations

from pathlib import Path

from sftlab.config import TaskConfig
from sftlab.eval.classification import check_classification_task
from sftlab.eval.items import read_records, read_text

__all__ = ["load_task_items"]


def load_task_items(task: TaskConfig) -> list[dict]:
    """The items a task scores, in file order, at most ``task.limit``.

    Classification / generation: the records of ``task.path``. Perplexity: one item ``{"text": ...}``
    holding the whole text (a text file as is, or a data file's records joined, see ``read_text``).
    Raises FileNotFoundError for a missing file and ValueError for a task that cannot be scored.
    """
    path = Path(task.path)
    if not task.path or not path.is_file():
        raise FileNotFoundError(f"eval task {task.name!r}: data file not found: {task.path!r}")
    if task.kind == "perplexity":
        return [{"text": read_text(path, task.prompt_template)}]
    if task.kind == "classification":
        check_classification_task(task)
    records = read_records(path)
    return records[: task.limit] if task.limit is not None else records
