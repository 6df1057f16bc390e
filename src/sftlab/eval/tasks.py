"""Tasks from the config: load their items and dispatch to the scorer of their kind."""

from __future__ import annotations

from pathlib import Path

from sftlab.config import TaskConfig
from sftlab.eval.classification import check_classification_task, score_classification
from sftlab.eval.generation import score_generation
from sftlab.eval.items import read_records, read_text
from sftlab.eval.perplexity import score_perplexity
from sftlab.eval.reply import score_reply_loss

__all__ = ["load_task_items", "score_classification", "score_generation", "score_perplexity", "score_reply_loss",
           "score_task"]


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


def score_task(
    model, tokenizer, task: TaskConfig, items: list[dict], *, batch_size: int = 32, base_model=None
) -> dict:
    """Run the scorer of ``task.kind`` on loaded items (``base_model`` is used by perplexity only, for KL)."""
    if task.kind == "classification":
        return score_classification(model, tokenizer, items, task, batch_size)
    if task.kind == "generation":
        return score_generation(model, tokenizer, items, task, batch_size)
    if task.kind == "reply_loss":
        return score_reply_loss(model, tokenizer, items, task, batch_size)
    if task.kind == "perplexity":
        return score_perplexity(
            model,
            tokenizer,
            items[0]["text"],
            task.seq_len,
            task.max_tokens,
            base_model,
            batch_size=batch_size,
        )
    raise ValueError(f"unknown task kind {task.kind!r}")
