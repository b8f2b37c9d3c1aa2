"""The command line: help for every verb, and bad input as one line + exit status 2 with
nothing already stored lost."""
from __future__ import annotations

from pathlib import Path

import pytest

from hwsearch.cli import main

FIXTURES = "tests.fixtures.bad_models"


@pytest.mark.parametrize("verb", ["search", "export", "targets", "report", "profile"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: hwsearch" in capsys.readouterr().out


def _one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("hwsearch: error:") and len(err.splitlines()) == 1, err
    assert match in err, err
    return err


def test_targets_lists_and_shows_sources(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    for name in ("host-x86", "cortex-m4", "cortex-m7", "cortex-a76", "nvidia-h200"):
        assert name in out
    assert main(["targets", "cortex-m7"]) == 0
    shown = capsys.readouterr().out
    assert "clock_hz" in shown and "STM32F746" in shown


def test_bad_inputs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).parents[1])  # the fixtures import as tests.fixtures.*
    out = str(tmp_path / "o")
    _one_line_error(capsys, ["targets", "no-such-board"], "unknown target 'no-such-board'; valid:")
    bad_spec = tmp_path / "bad.toml"
    bad_spec.write_text("schema_version = 1\nname = 'x'\n[compute\n")
    _one_line_error(capsys, ["targets", str(bad_spec)], "malformed TOML")
    _one_line_error(capsys, ["search", "--out", out, "--model", f"{FIXTURES}:unexportable"], "torch.export failed")
    _one_line_error(capsys, ["search", "--out", out, "--model", f"{FIXTURES}:not_a_model"], "returned str")
    _one_line_error(capsys, ["search", "--out", out, "--model", "nomodule"], "must look like")
    _one_line_error(capsys, ["search", "--out", out, "--max-ratio", "1.5"], "max_ratio 1.5 out of range")
    _one_line_error(capsys, ["search", "--out", out, "--patterns", "dense,wavelet"], "unknown patterns ['wavelet']")
    _one_line_error(capsys, ["search", "--out", out, "--storage", "postgresql://nobody@127.0.0.1:1/x"],
                    "cannot open study storage")
    _one_line_error(capsys, ["profile", "--out", out, "--ratios", "0,1.2"], "out of range")
    _one_line_error(capsys, ["export", "--from", str(tmp_path / "nothing")], "not found")


def test_corrupt_study_file_is_refused_and_kept(capsys, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    db = out / "study.db"
    db.write_bytes(b"this is not a database" * 100)
    before = db.read_bytes()
    _one_line_error(capsys, ["search", "--out", str(out)], "cannot open study storage")
    assert db.read_bytes() == before  # nothing already stored is lost
