"""Hostile inputs and faults: each case asserts the exact behaviour (the error's first line, the exit code,
what is left on disk, the counts). No case may print a traceback, lose a checkpoint or exit 0 with a wrong
result. Runs use the tiny tokenizer and a from-scratch 2-layer model; the two-runs and kill cases run
``sftlab train`` in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sftlab.cli import main

REPO = Path(__file__).resolve().parents[1]
SCRATCH = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1}


def chat_rows(n: int = 24) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(n)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def run_yaml(tmp_path, tiny_tokenizer_dir):
    """A YAML config of a 4-step run into tmp_path/run; returns (config path, run dir)."""
    data = write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    cfg = {"model": {"tokenizer": str(tiny_tokenizer_dir), "from_scratch": SCRATCH},
           "data": {"sources": [{"path": str(data)}], "max_seq_len": 64, "cache_dir": str(tmp_path / "cache")},
           "train": {"max_steps": 4, "lr": 1e-2, "micro_batch_size": 4, "progress": False, "save_every_steps": 2},
           "eval": {"samples": 0},
           "output": {"dir": str(tmp_path / "run"), "report": False}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, tmp_path / "run"


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but ``.lock``'s (it names the last run that held the folder, refused or not)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


# ------------------------------------------------------------------------------------ run directories


def test_rerun_into_a_finished_run_is_refused_and_loses_nothing(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    before = snapshot(run)
    code, _, err = cli(capsys, "train", str(config))
    assert code == 2
    assert err.startswith(f"error: {run} already holds a run (checkpoints/step-000002, final/, "
                          "summary.json). Continue it with --set train.resume=auto, start over with --set "
                          "output.overwrite=true")
    assert snapshot(run) == before


def test_overwrite_that_fails_on_missing_data_keeps_the_previous_run(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    before = snapshot(run)
    code, _, err = cli(capsys, "train", str(config), "--set", "output.overwrite=true",
                       "--set", f"data.sources.0.path={tmp_path / 'missing.jsonl'}")
    assert code == 2 and "missing.jsonl" in err.splitlines()[0]
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k.startswith(("checkpoints", "final"))} == \
        {k: v for k, v in before.items() if k.startswith(("checkpoints", "final"))}
    assert after["config.yaml"] == before["config.yaml"] and after["metrics.jsonl"] == before["metrics.jsonl"]


def test_overwrite_replaces_the_previous_run_and_says_so(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    old_final = (run / "final" / "model.safetensors").read_bytes()
    code, out, _ = cli(capsys, "train", str(config), "--set", "output.overwrite=true", "--set", "train.max_steps=3",
                       "--set", "train.seed=1")
    assert code == 0
    assert f"output.overwrite: removed the previous run's checkpoints, final, metrics.jsonl, summary.json from {run}" in out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
    assert (run / "final" / "model.safetensors").read_bytes() != old_final
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1


def test_resume_by_path_verifies_the_checkpoint(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    ckpt = run / "checkpoints" / "step-000002"
    data = bytearray((ckpt / "trainable.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "trainable.safetensors").write_bytes(bytes(data))
    code, _, err = cli(capsys, "train", str(config), "--set", f"train.resume={ckpt}")
    assert code == 2
    assert err.startswith(f"stopped: train.resume: {ckpt} fails verification (manifest missing or a file's sha256 "
                          "differs: damaged or half-written)")
    assert not (run / "checkpoints" / "step-000004").exists() and (run / "final").is_dir()


def test_resume_keeps_config_refuses_breaking_changes_and_records_the_rest(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    saved = (run / "config.yaml").read_text()
    code, _, err = cli(capsys, "train", str(config), "--set", "train.resume=auto", "--set", "train.seed=7")
    assert code == 2 and err.startswith(f"error: cannot resume {run} with changed train.seed: 42 -> 7")
    code, out, _ = cli(capsys, "train", str(config), "--set", "train.resume=auto", "--set", "train.lr=0.005")
    assert code == 0
    assert "note: resuming with train.lr changed: 0.01 -> 0.005" in out
    assert (run / "config.yaml").read_text() == saved
    record = json.loads((run / "config_changes.jsonl").read_text())
    assert record["changes"] == {"train.lr": [0.01, 0.005]}


def test_resume_auto_over_a_finished_run_without_checkpoints_is_refused(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config), "--set", "train.save_every_steps=0")[0] == 0
    before = snapshot(run)
    code, _, err = cli(capsys, "train", str(config), "--set", "train.save_every_steps=0", "--set", "train.resume=auto")
    assert code == 2
    assert err.startswith(f"error: {run} already holds a run (final/, summary.json). It has no checkpoint to "
                          "continue. Start over with --set output.overwrite=true")
    assert snapshot(run) == before


def test_resume_of_a_config_saved_before_a_key_existed_and_max_steps_below_the_checkpoint(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    del saved["data"]["warn_removed_share"]  # as written by an sftlab without that key
    saved["data"]["sources"][0]["path"] = os.path.relpath(saved["data"]["sources"][0]["path"])  # the same file
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    code, _, err = cli(capsys, "train", str(config), "--set", "train.resume=auto", "--set", "train.max_steps=1")
    assert code == 2 and err.startswith("error: train.max_steps 1 is below the step of the checkpoint to resume (2)")
    (run / "final").rename(tmp_path / "old_final")
    code, out, err = cli(capsys, "train", str(config), "--set", "train.resume=auto")
    assert code == 0 and "note: resuming" not in out, err and not (run / "config_changes.jsonl").exists()


def test_an_empty_lock_file_does_not_block(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    run.mkdir()
    (run / ".lock").write_text("")  # a lock whose writer died before writing a byte
    assert cli(capsys, "train", str(config))[0] == 0


def test_output_dir_under_a_file_or_read_only(tmp_path, run_yaml, capsys):
    config, _ = run_yaml
    (tmp_path / "afile").write_text("x")
    code, _, err = cli(capsys, "train", str(config), "--set", f"output.dir={tmp_path / 'afile' / 'run'}")
    assert code == 2 and err.startswith(f"error: output.dir {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file")
    if os.geteuid() == 0:
        return  # root writes anywhere: the read-only case cannot be made here
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    code, _, err = cli(capsys, "train", str(config), "--set", f"output.dir={ro / 'run'}")
    assert code == 2 and "is not writable" in err


def start_train(config: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftlab", "train", str(config), *extra], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, seconds: float = 120) -> None:
    end = time.time() + seconds
    while not predicate():
        if time.time() > end:
            raise AssertionError("timed out")
        time.sleep(0.2)


def test_second_run_on_a_locked_folder_is_refused_and_a_stale_lock_is_taken_over(tmp_path, run_yaml):
    config, run = run_yaml
    first = start_train(config, "--set", "train.max_steps=100000", "--set", "train.save_every_steps=5")
    try:
        wait_for(lambda: (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step-*")))
        owner = json.loads((run / ".lock").read_text())
        assert owner["pid"] == first.pid
        second = subprocess.run([sys.executable, "-m", "sftlab", "train", str(config), "--set", "train.resume=auto"],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.startswith(f"error: {run} is in use by another run (pid {first.pid} on ")
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not (run / "config_changes.jsonl").exists()  # the refused run changed nothing
    last = max(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("step-*") if not p.name.endswith(".tmp"))
    third = subprocess.run([sys.executable, "-m", "sftlab", "train", str(config), "--set", "train.resume=auto",
                            "--set", f"train.max_steps={last + 5}"], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr
    assert (f"note: the run that held {run / '.lock'} (pid {first.pid}) ended without finishing; taking the folder "
            "over") in third.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == last + 5 and summary["resumed_from"].startswith(str(run / "checkpoints" / "step-"))


# ------------------------------------------------------------------------------------------- configs

BAD_VALUES = [
    ("train.epochs=-1", "train.epochs: -1.0 is out of range; it must be >= 0 (0 only with max_steps)"),
    ("train.epochs=0", "train.epochs is 0 and train.max_steps is 0: nothing to train; set one of them"),
    ("train.max_steps=-5", "train.max_steps: -5 is out of range; it must be >= 0 (0: from epochs)"),
    ("data.max_seq_len=-5", "data.max_seq_len: -5 is out of range; it must be >= 2"),
    ("train.warmup_ratio=2", "train.warmup_ratio: 2.0 is out of range; it must be in [0, 1]"),
    ("train.keep_last=-1", "train.keep_last: -1 is out of range; it must be >= 0 (0: keep all)"),
    ("eval.split_ratio=1.5", "eval.split_ratio: 1.5 is out of range; it must be in [0, 1)"),
    ("train.micro_batch_size=0", "train.micro_batch_size: 0 is out of range; it must be >= 1"),
    ("train.grad_accum=0", "train.grad_accum: 0 is out of range; it must be >= 1"),
    ("train.lr=-1", "train.lr: -1.0 is out of range; it must be in [0, 1]"),
    ("train.lr=1e6", "train.lr: 1000000.0 is out of range; it must be in [0, 1]"),
    ("train.segment_attention=true", "train.segment_attention needs data.packing: true"),
    ("data.sources.100000000.path=x", "override 'data.sources.100000000.path': list index '100000000' must be a "
     "number from 0 to 1000"),
]


@pytest.mark.parametrize("override,first_line", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_values_that_make_no_sense_are_refused_at_load(capsys, override, first_line):
    code, _, err = cli(capsys, "config", "show", "--set", override)
    assert code == 2 and err.startswith(f"error: {first_line}")


def test_segment_attention_with_eager_attention_is_refused(capsys):
    code, _, err = cli(capsys, "config", "show", "--set", "data.packing=true", "--set", "train.segment_attention=true",
                       "--set", "model.attn_implementation=eager")
    assert code == 2 and err.startswith("error: train.segment_attention runs on sdpa or flash_attention_2")


def test_yaml_aliases_and_duplicate_keys_are_refused(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    layers = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    layers += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    bomb.write_text("model:\n  from_scratch:\n" + "".join(f"    {line}\n" for line in layers))
    code, _, err = cli(capsys, "config", "show", str(bomb))
    assert code == 2 and err.startswith(f"error: {bomb}: not valid YAML: YAML anchors and aliases (& and *) are not "
                                        "accepted in configs (line 3)")
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  lr: 1.0e-4\n  lr: 2.0e-4\n")
    code, _, err = cli(capsys, "config", "show", str(dup))
    assert code == 2 and err.startswith(f"error: {dup}: duplicate key 'lr' (line 3): each key once")


def test_tokens_per_second_after_a_resume_counts_this_run_only(tmp_path, run_yaml, capsys, monkeypatch):
    config, run = run_yaml
    assert cli(capsys, "train", str(config))[0] == 0
    at_step_2 = json.loads((run / "checkpoints" / "step-000002" / "state.json").read_text())["tokens"]
    (run / "final").rename(tmp_path / "old_final")
    monkeypatch.setenv("SFTLAB_FAULTS", "sleep_after_step=3:1.0")  # a train time that rounding cannot blur
    assert cli(capsys, "train", str(config), "--set", "train.resume=auto")[0] == 0
    s = json.loads((run / "summary.json").read_text())
    assert 0 < at_step_2 < s["tokens"]
    assert s["tokens_per_s"] * s["train_time_s"] == pytest.approx(s["tokens"] - at_step_2, rel=0.02)


# ------------------------------------------------------------------------------------------- faults


def run_with_faults(config: Path, faults: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SFTLAB_FAULTS": faults}
    return subprocess.run([sys.executable, "-m", "sftlab", "train", str(config), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_disk_full_while_writing_a_checkpoint(tmp_path, run_yaml):
    config, run = run_yaml
    proc = run_with_faults(config, "disk_full_in_checkpoint=2")
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("stopped: could not write checkpoint at step 2 ([Errno 28] No "
                                                   "space left on device; ")
    assert "MiB free on that disk); the last valid checkpoint is kept in" in proc.stderr
    assert list((run / "checkpoints").iterdir()) == []  # no step-000002.tmp left
    assert json.loads((run / "status.json").read_text())["state"] == "stopped"


def test_disk_full_while_writing_final_keeps_checkpoints_and_a_rerun_finishes(tmp_path, run_yaml):
    config, run = run_yaml
    proc = run_with_faults(config, "disk_full_in_final")
    assert proc.returncode == 5 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"stopped: could not write {run / 'final'} ([Errno 28] No space "
                                                   "left on device; ")
    assert not (run / "final").exists() and not (run / "final.tmp").exists()
    assert (run / "checkpoints" / "step-000002").is_dir()
    again = run_with_faults(config, "", "--set", "train.resume=auto")
    assert again.returncode == 0 and (run / "final" / "model.safetensors").is_file()


def test_internal_error_is_one_message_and_a_log_file(monkeypatch, capsys):
    import sftlab.config

    def broken(*a, **k):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(sftlab.config, "load_config", broken)
    code = main(["config", "show"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith("internal error: RuntimeError: something inside broke\n(the traceback is in ")
    log = Path(err.split("the traceback is in ")[1].split(";")[0])
    assert "Traceback" in log.read_text() and "something inside broke" in log.read_text()
    log.unlink()


# ---------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("content,what", [(b"", "is empty (0 bytes)"), (b"\n\n   \n\t\n", "holds only blank lines")])
def test_empty_and_blank_data_files_are_one_clear_error(tmp_path, run_yaml, capsys, content, what):
    config, run = run_yaml
    (tmp_path / "empty.jsonl").write_bytes(content)
    code, _, err = cli(capsys, "train", str(config), "--set", f"data.sources.0.path={tmp_path / 'empty.jsonl'}")
    assert code == 2
    assert err.startswith(f"error: empty.jsonl: the data {what}: there are no records to read")


def test_deep_and_duplicate_key_records_are_counted_skips(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    rows = [json.dumps(r) for r in chat_rows(8)]
    rows.insert(2, '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}")
    rows.insert(5, '{"messages": [], "messages": []}')
    (tmp_path / "hostile.jsonl").write_text("\n".join(rows) + "\n")
    src = f"data.sources.0.path={tmp_path / 'hostile.jsonl'}"
    code, _, err = cli(capsys, "train", str(config), "--set", src)
    assert code == 2 and err.startswith("error: hostile.jsonl:3: the record is nested too deeply to read")
    code, _, err = cli(capsys, "train", str(config), "--set", src, "--set", "data.on_error=skip")
    assert code == 0
    report = json.loads((run / "data_report.json").read_text())["train"]
    assert report["records_in"] == 10 and report["records_kept"] == 8
    assert report["skipped"] == {"too_deep": 1, "duplicate_key": 1}
    skipped = [json.loads(x) for x in (run / "skipped.jsonl").read_text().splitlines()]
    assert [(s["origin"], s["reason"]) for s in skipped] == [("hostile.jsonl:3", "too_deep"),
                                                            ("hostile.jsonl:6", "duplicate_key")]


def test_losing_most_records_to_truncation_is_loud(tmp_path, run_yaml, capsys):
    config, run = run_yaml
    rows = [{"messages": [{"role": "user", "content": "Tell me a story."},
                          {"role": "assistant", "content": "Once upon a time " * 40}]} for _ in range(20)]
    write_jsonl(tmp_path / "long.jsonl", rows + chat_rows(4))
    code, _, err = cli(capsys, "train", str(config), "--set", f"data.sources.0.path={tmp_path / 'long.jsonl'}")
    assert code == 0
    lines = err.splitlines()
    assert lines[0] == (f"warning: 20 of 24 records (83.3%) were removed before training (each one is in "
                        f"{run / 'skipped.jsonl'}):")
    assert lines[1].startswith("  empty_mask: 20 (nothing left to train (a reply cut off by data.max_seq_len")
    assert "raise data.max_seq_len, set data.truncation: split" in lines[1]
    # a small share stays quiet
    write_jsonl(tmp_path / "mostly_fine.jsonl", rows[:1] + chat_rows(24))
    code, _, err = cli(capsys, "train", str(config), "--set", f"data.sources.0.path={tmp_path / 'mostly_fine.jsonl'}",
                       "--set", "output.overwrite=true")
    assert code == 0 and "were removed before training" not in err


# ------------------------------------------------------------------------------------ models, adapters


@pytest.fixture()
def lora_run(tmp_path, run_yaml, capsys):
    """A LoRA run on a saved base (the from-scratch run's final/, moved to tmp_path/base)."""
    config, run = run_yaml
    assert cli(capsys, "train", str(config), "--set", "train.max_steps=1")[0] == 0
    (run / "final").rename(tmp_path / "base")
    code = cli(capsys, "train", str(config), "--set", f"model.name_or_path={tmp_path / 'base'}", "--set",
               "model.from_scratch=null", "--set", "model.tokenizer=null", "--set", "lora.enabled=true",
               "--set", "train.max_steps=1", "--set", f"output.dir={tmp_path / 'lora'}")[0]
    assert code == 0
    return tmp_path / "lora" / "final", tmp_path / "base"


def test_adapter_whose_base_is_gone(tmp_path, lora_run, capsys):
    adapter, base = lora_run
    base.rename(tmp_path / "moved")
    (tmp_path / "t.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(yaml.safe_dump({"eval": {"tasks": [{"name": "t", "kind": "perplexity", "path": str(tmp_path / "t.txt"),
                                                         "seq_len": 16, "max_tokens": 64}]}}))
    for argv in (["generate", "--model", str(adapter), "hi"], ["merge", "--adapter", str(adapter), "--out",
                 str(tmp_path / "m")], ["export", str(adapter), "--out", str(tmp_path / "e")],
                 ["eval", "--model", str(adapter), "--config", str(tasks)], ["chat", "--model", str(adapter)]):
        code, _, err = cli(capsys, *argv)
        assert code == 2, argv
        assert err.startswith(f"error: the base model of the LoRA adapter {adapter} cannot be loaded: "), err
        assert "pass the base with --base DIR" in err
    code, _, err = cli(capsys, "merge", "--adapter", str(adapter), "--base", str(tmp_path / "moved"),
                       "--out", str(tmp_path / "m"))
    assert code == 0


def test_merge_onto_a_base_of_another_shape(tmp_path, lora_run, tiny_tokenizer, capsys):
    from sftlab.model.tiny import build_tiny_llama

    adapter, _ = lora_run
    other = build_tiny_llama(len(tiny_tokenizer), seed=0)  # hidden 64, not 32
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer.save_pretrained(tmp_path / "other")
    code, _, err = cli(capsys, "merge", "--adapter", str(adapter), "--base", str(tmp_path / "other"),
                       "--out", str(tmp_path / "m"))
    assert code == 2
    assert err.splitlines()[-1].startswith(f"error: the LoRA adapter {adapter} does not fit the base model '{tmp_path / 'other'}' "
                          "(size mismatch for ")
    assert not (tmp_path / "m").exists()


def test_tokenizer_path_that_does_not_exist(tmp_path, run_yaml, capsys):
    config, _ = run_yaml
    code, _, err = cli(capsys, "train", str(config), "--set", f"model.tokenizer={tmp_path / 'no' / 'tok'}")
    assert code == 2 and err.startswith(f"error: model path does not exist: {tmp_path / 'no' / 'tok'}")


def test_unwritable_output_folder_is_one_error(tmp_path, run_yaml, capsys, monkeypatch):
    """A read-only filesystem or a folder without write permission (simulated: this suite may run as root,
    who writes anywhere)."""
    config, run = run_yaml
    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".write-test-"):
            raise PermissionError(13, "Permission denied")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    code, _, err = cli(capsys, "train", str(config))
    assert code == 2
    assert err == (f"error: output.dir {run} is not writable (Permission denied); pick another output.dir or fix "
                   "its permissions\n")


def test_a_short_write_inside_safetensors_says_disk_space(tmp_path, run_yaml, capsys, monkeypatch):
    """safetensors reports a full disk as its own 'unexpected pos' error, which never mentions disk space."""
    import safetensors.torch
    from safetensors import SafetensorError

    config, run = run_yaml
    real = safetensors.torch.save_file

    def short_write(tensors, filename, *a, **k):
        if "step-" in str(filename):
            raise SafetensorError("Error while serializing: IoError(Custom { kind: Other, error: \"unexpected pos\" })")
        return real(tensors, filename, *a, **k)

    monkeypatch.setattr(safetensors.torch, "save_file", short_write)
    code, _, err = cli(capsys, "train", str(config))
    assert code == 5
    assert err.startswith("stopped: could not write checkpoint at step 2 (Error while serializing: IoError(")
    assert "MiB free on that disk); the last valid checkpoint is kept in" in err
    assert list((run / "checkpoints").iterdir()) == []
