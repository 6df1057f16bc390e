"""Typed config: strict keys with suggestions, type checks, overrides, round trip."""

from __future__ import annotations

import pytest

from sftlab.config import Config, ConfigError, load_config, save_config


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.lr=1e-4", "train.adam_betas=[0.9, 0.95]", "data.sources.0.path=a.jsonl",
                             "data.sources.1.path=b.jsonl", "data.sources.1.weight=0.3"])
    assert isinstance(cfg, Config)
    assert cfg.train.lr == 1e-4 and cfg.train.adam_betas == (0.9, 0.95)
    assert [s.path for s in cfg.data.sources] == ["a.jsonl", "b.jsonl"]
    assert cfg.data.sources[1].weight == 0.3


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
        ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'?"),
        ("train.scheduler=cosin", "did you mean 'cosine'?"),
        ("train.micro_batch_size=eight", "train.micro_batch_size: expected an integer, got 'eight'"),
        ("train.progress=maybe", "train.progress: expected true or false"),
        ("data.sources.0.pth=x", "did you mean 'data.sources[0].path'?"),
        ("train.lr", "must look like section.key=value"),
    ],
)
def test_bad_values_name_the_problem(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["train.lr=3e-4", "eval.tasks.0.name=sst2", "eval.tasks.0.stop=['\\n', '.']"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(tmp_path / "list.yaml")


def test_yaml_is_never_evaluated(tmp_path):
    (tmp_path / "evil.yaml").write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "evil.yaml")
