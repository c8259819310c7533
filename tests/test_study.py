"""StudyConfig: what a study run needs, checked when made (run_study end to end: test_e2e.py)."""
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from samhw.cli import main
from samhw.study import EXPERIMENTS, StudyConfig, StudyError


def test_a_config_keeps_its_options_as_given(tmp_path):
    config = StudyConfig(str(tmp_path / "out"), splits=["test", "train"], experiments=["E2", "E1"], seeds=2, limit=5)
    assert config.out == tmp_path / "out" and isinstance(config.out, Path)
    assert config.splits == ("test", "train") and config.experiments == ("E2", "E1")
    assert config.prompts == EXPERIMENTS["E2"] + EXPERIMENTS["E1"]
    assert config.seed_list == [0, 1]
    with pytest.raises(FrozenInstanceError):
        config.seeds = 3


@pytest.mark.parametrize("options, message", [
    ({"splits": ["tset"]}, "splits must be one or more of train, val, test, all"),
    ({"splits": []}, "splits must be"),
    ({"splits": ["test", "test"]}, "each once"),
    ({"experiments": ["E4"]}, "experiments must be one or more of E1, E2, E3, E6"),
    ({"seeds": 0}, "seeds must be a whole number of at least 1, got 0"),
    ({"limit": 0}, "limit must be"),
    ({"batch_size": -1}, "batch_size must be"),
    ({"workers": 1.5}, "workers must be"),
    ({"seeds": True}, "seeds must be a whole number"),
    ({"model": "vit_q"}, "unknown model 'vit_q'; known: litemedsam, vit_b"),
])
def test_a_config_that_cannot_run_is_refused(tmp_path, options, message):
    with pytest.raises(StudyError, match=message):
        StudyConfig(tmp_path, **options)


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path, capsys):
    # (no data there: were the options not checked first, the error would be another one)
    assert main(["study", "--splits", "test", "test", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "out"),
                 "--limit", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: splits must be one or more of train, val, test, all, each once; got ['test', 'test']"]
    assert not (tmp_path / "out").exists()
