import os

import pytest

from pipeline.core.config import PipelineConfig
from pipeline.core.config_loader import dump_config, flatten_config, load_config
from pipeline.core.errors import ConfigError
from pipeline.orchestrate.cli import main


def test_defaults_and_typed_overrides():
    cfg = load_config(None, ["train.epochs=3", "tokenizer.lowercase=true",
                             "data.train=[a.txt, b/*.txt]", "data.valid=v.txt"])
    assert cfg.train.epochs == 3
    assert cfg.tokenizer.lowercase is True
    assert cfg.data.train == ["a.txt", "b/*.txt"]
    assert cfg.data.valid == ["v.txt"]
    assert flatten_config(cfg)["train.epochs"] == 3


@pytest.mark.parametrize("override, expected", [
    ("tokenizer.max_vocab=-5", "tokenizer.max_vocab = -5: Input should be greater than or equal to 1"),
    ("data.valid_fraction=1.5", "data.valid_fraction = 1.5: Input should be less than 1"),
    ("tokenizer.kind=bpe", "tokenizer.kind = 'bpe': Input should be 'word', 'char' or 'subword'"),
    ("train.epochs=many", "train.epochs = 'many': Input should be a valid integer"),
    ("tokenizer.max_vocb=10", "unknown key 'tokenizer.max_vocb'; did you mean 'tokenizer.max_vocab'?"),
    ("tokeniser.kind=word", "unknown key 'tokeniser'; did you mean 'tokenizer'?"),
    ("epochs=3", "--set 'epochs=3' must look like section.key=value"),
])
def test_errors_name_key_value_and_rule(override, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_fractions_must_leave_training_data():
    with pytest.raises(ConfigError, match=r"valid_fraction \+ test_fraction = 1 leaves no training data"):
        load_config(None, ["data.valid_fraction=0.5", "data.test_fraction=0.5"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_config(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'train.epoch'.*\(in .*typo.yaml\)"):
        load_config(typo)


def test_repo_config_is_valid_and_round_trips(tmp_path):
    import pathlib

    repo_config = pathlib.Path(__file__).parent.parent / "pipeline_config.yaml"
    cfg = load_config(repo_config)
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(cfg))
    assert load_config(again) == cfg


def test_config_show_prints_effective_config(capsys):
    assert main(["config", "show", "--set", "train.epochs=7"]) == 0
    out = capsys.readouterr().out
    assert "train:\n" in out and "  epochs: 7\n" in out


def test_cli_config_error_exit_code(capsys):
    assert main(["config", "show", "--set", "model.cell=gru"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmpipe: config error: model.cell = 'gru'")


def test_the_built_in_defaults_are_the_shipped_config():
    shipped = load_config(os.path.join(os.path.dirname(__file__), "..", "pipeline_config.yaml"))
    assert load_config(None) == shipped
    assert PipelineConfig() == shipped
