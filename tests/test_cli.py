"""CLI: bad configs give one clear error line (no traceback) and a non-zero exit; help has examples."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sftlab.cli import main


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def one_error_line(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0]
    assert "Traceback" not in err[0]


def test_unknown_key(tmp_path, capsys):
    cfg = write(tmp_path, "train:\n  lrr: 0.1\n")
    one_error_line(capsys, ["train", cfg], "unknown config key 'train.lrr'; did you mean 'train.lr'?")


def test_wrong_type(tmp_path, capsys):
    cfg = write(tmp_path, "train:\n  epochs: many\n")
    one_error_line(capsys, ["train", cfg], "train.epochs: expected a number, got 'many'")


def test_missing_config_file(tmp_path, capsys):
    one_error_line(capsys, ["train", str(tmp_path / "nope.yaml")], "config file not found")


def test_model_path_that_does_not_exist(tmp_path, capsys):
    cfg = write(tmp_path, f"model:\n  name_or_path: {tmp_path}/no/such/model\noutput:\n  dir: {tmp_path}/out\n")
    one_error_line(capsys, ["train", cfg], "model path does not exist")


def test_missing_data_file(tmp_path, capsys, tiny_tokenizer_dir):
    cfg = write(
        tmp_path,
        f"model:\n  tokenizer: {tiny_tokenizer_dir}\n  from_scratch: {{hidden_size: 32, intermediate_size: 64, "
        f"num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 1}}\n"
        f"data:\n  sources:\n    - path: {tmp_path}/missing.jsonl\noutput:\n  dir: {tmp_path}/out\n",
    )
    code = main(["train", cfg])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "missing.jsonl" in err[0], err


def test_override_error(tmp_path, capsys):
    one_error_line(capsys, ["config", "show", "--set", "train.scheduler=cosin"], "did you mean 'cosine'?")


def test_config_show_round_trips(capsys):
    assert main(["config", "show", "--set", "train.lr=0.001"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.001" in out


def test_help_has_examples_and_no_traceback_in_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sftlab", "train", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "example: sftlab train" in proc.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  nme: x\n")
    proc = subprocess.run([sys.executable, "-m", "sftlab", "train", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown config key 'model.nme'"), proc.stderr


@pytest.mark.parametrize("cmd", ["train", "data", "eval", "generate", "demo", "merge", "export", "config"])
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "example: sftlab" in capsys.readouterr().out
