"""Sample generations on a few held-out records, before and after training (``samples.jsonl``, the report).

The prompt of a record is what comes before its first trained token (for a chat: the conversation up to
the first assistant reply, with the template's generation prompt); the reference is that first trained
span. Text records trained on every token get their first tokens as the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

from sftlab.data.types import IGNORE_INDEX


@dataclass
class SamplePrompt:
    index: int  # row of the eval dataset
    source: str
    prompt_ids: list[int]
    reference_ids: list[int]


def split_prompt(input_ids: list[int], labels: list[int], text_prompt_tokens: int = 16) -> tuple[list[int], list[int]]:
    """(prompt ids, reference ids): the ids before the first trained position, and that trained span.

    A record trained from its start (language modelling) is cut after ``text_prompt_tokens`` tokens (at
    most half of it).

    >>> split_prompt([5, 6, 7, 8, 9], [-100, -100, 7, 8, -100])
    ([5, 6], [7, 8])
    >>> split_prompt([5, 6, 7, 8], [5, 6, 7, 8], text_prompt_tokens=1)
    ([5], [6, 7, 8])
    """
    first = next((i for i, x in enumerate(labels) if x != IGNORE_INDEX), len(labels))
    if first < 1:
        first = max(1, min(text_prompt_tokens, len(input_ids) // 2))
    end = first
    while end < len(labels) and labels[end] != IGNORE_INDEX:
        end += 1
    return list(input_ids[:first]), list(input_ids[first:end])


def pick_sample_prompts(dataset, n: int) -> list[SamplePrompt]:
    """The first ``n`` records of ``dataset`` (columns input_ids, labels, optional source) as prompts."""
    if dataset is None or n <= 0 or len(dataset) == 0:
        return []
    rows = dataset.select(range(min(n, len(dataset))))
    sources = rows["source"] if "source" in rows.column_names else [""] * len(rows)
    out = []
    for i, (ids, labels, src) in enumerate(zip(rows["input_ids"], rows["labels"], sources)):
        prompt, ref = split_prompt(ids, labels)
        out.append(SamplePrompt(i, str(src), prompt, ref))
    return out


def generate_samples(model, tokenizer, prompts: list[SamplePrompt], max_new_tokens: int) -> list[str]:
    """Greedy continuations of the prompts (stops at the end-of-turn / eos token), in order."""
    from sftlab.eval.generation import generate_greedy

    if not prompts:
        return []
    was_training = model.training
    texts = generate_greedy(
        model,
        tokenizer,
        [p.prompt_ids for p in prompts],
        max_new_tokens=max_new_tokens,
        stop=(),
        batch_size=len(prompts),
    )
    model.train(was_training)
    return texts


def sample_records(tokenizer, prompts: list[SamplePrompt], before: list[str], after: list[str]) -> list[dict]:
    """Rows of ``samples.jsonl``: index, source, prompt (with its markup), reference, before, after."""
    return [
        {
            "index": p.index,
            "source": p.source,
            "prompt": tokenizer.decode(p.prompt_ids, skip_special_tokens=False),
            "reference": tokenizer.decode(p.reference_ids, skip_special_tokens=True),
            "before": b,
            "after": a,
        }
        for p, b, a in zip(prompts, before, after)
    ]
