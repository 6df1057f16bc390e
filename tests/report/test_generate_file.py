"""``sftlab generate --prompts FILE``: batched (left-padded) generation gives what one-by-one generation gives."""

from __future__ import annotations

import json

from sftlab.cli import main

PROMPTS = [
    "What is 3 + 3?",
    "Hi",
    "Review: a gorgeous, stirring and funny film about a fox. Sentiment:",
    "And 5?",
    "What is the capital of France?",
]


def one_by_one(model_dir, prompts, **kw):
    from sftlab.generate import build_prompt_ids, generate_text, load_for_inference

    model, tok = load_for_inference(model_dir)
    return [generate_text(model, tok, build_prompt_ids(tok, p), **kw) for p in prompts]


def test_batched_file_equals_one_by_one(real_runs, tmp_path, capsys):
    src = tmp_path / "prompts.jsonl"
    rows = [{"id": i, "prompt": p} for i, p in enumerate(PROMPTS[:-1])]
    rows.append({"id": 4, "messages": [{"role": "user", "content": PROMPTS[-1]}]})
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out" / "replies.jsonl"
    assert (
        main(
            [
                "generate",
                "--model",
                str(real_runs.base),
                "--prompts",
                str(src),
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--max-new-tokens",
                "10",
            ]
        )
        == 0
    )
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert [g["id"] for g in got] == [0, 1, 2, 3, 4] and got[4]["messages"] == rows[4]["messages"]
    want = one_by_one(real_runs.base, PROMPTS, max_new_tokens=10)
    assert [g["completion"] for g in got] == want and all(want)  # padding changes nothing
    assert "generated 5 completions" in capsys.readouterr().err


def test_text_file_to_stdout_and_run_directory_as_model(real_runs, tmp_path, capsys):
    src = tmp_path / "prompts.txt"
    src.write_text("What is 3 + 3?\n\nHi\n")
    assert main(["generate", "--model", str(real_runs.a), "--prompts", str(src), "--max-new-tokens", "6"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["prompt"] for x in lines] == ["What is 3 + 3?", "Hi"]
    assert [x["completion"] for x in lines] == one_by_one(
        real_runs.a / "final", ["What is 3 + 3?", "Hi"], max_new_tokens=6
    )


def test_bad_prompts_file_is_one_error_line(real_runs, tmp_path, capsys):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"prompt": "ok"}\n{"question": "no prompt field"}\n')
    assert main(["generate", "--model", str(real_runs.base), "--prompts", str(src)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f'error: {src}:2: each line needs a "prompt" string'), err
    assert main(["generate", "--model", str(real_runs.base)]) == 2
    assert "give either a prompt or --prompts FILE" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path), "hi"]) == 2
    assert "holds no model" in capsys.readouterr().err
