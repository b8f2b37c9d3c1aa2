"""A newcomer's first run: a factory that raises is one line, and the reference model's
training is announced."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import pytest

from hwsearch import cli, zoo
from hwsearch.cli import main

ROOT = Path(__file__).parents[1]
FIXTURES = "tests.fixtures.bad_models"


def _error_lines(capsys, argv: list[str]) -> list[str]:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[0].startswith("hwsearch: error:"), err
    return err


@pytest.fixture
def restore_progress_logging():
    """``main`` routes hwsearch.zoo's INFO messages to the terminal; put the logger back."""
    lg = logging.getLogger("hwsearch.zoo")
    state = (lg.level, lg.propagate, list(lg.handlers))
    yield
    lg.setLevel(state[0])
    lg.propagate = state[1]
    lg.handlers[:] = state[2]


@pytest.mark.parametrize("argv, factory, quoted", [
    (["search", "--model", f"{FIXTURES}:raising_model"], f"{FIXTURES}:raising_model",
     "RuntimeError: checkpoint weights/net.pt not found"),
    (["search", "--model", f"{FIXTURES}:unexportable", "--data", f"{FIXTURES}:raising_data"],
     f"{FIXTURES}:raising_data", "ValueError: no split named 'validation'"),
    (["profile", "--model", f"{FIXTURES}:raising_model"], f"{FIXTURES}:raising_model",
     "RuntimeError: checkpoint weights/net.pt not found"),
])
def test_raising_factory_is_one_line(argv, factory, quoted, capsys, tmp_path, monkeypatch, restore_progress_logging):
    monkeypatch.chdir(ROOT)  # the fixtures import as tests.fixtures.*
    monkeypatch.setattr(sys, "path", list(sys.path))
    err = _error_lines(capsys, argv + ["--out", str(tmp_path / "o")])
    assert len(err) == 1, err  # no traceback, no second line of the exception
    assert repr(factory) in err[0] and quoted in err[0], err
    assert "hwsearch -v" in err[0]  # the remedy: where the traceback is


def test_model_module_imports_from_the_current_directory(capsys, tmp_path, monkeypatch, restore_progress_logging):
    """The library leaves sys.path alone; the command imports --model from where it runs."""
    pkg = tmp_path / "mypkg_cli_ux"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("def net():\n    raise RuntimeError('imported from the cwd')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    with pytest.raises(Exception, match="No module named 'mypkg_cli_ux'"):
        zoo.load_model("mypkg_cli_ux.models:net")  # the library did not add the cwd
    monkeypatch.delitem(sys.modules, "mypkg_cli_ux", raising=False)
    err = _error_lines(capsys, ["profile", "--out", str(tmp_path / "o"), "--model", "mypkg_cli_ux.models:net"])
    assert "RuntimeError: imported from the cwd" in err[0], err
    monkeypatch.delitem(sys.modules, "mypkg_cli_ux.models", raising=False)
    monkeypatch.delitem(sys.modules, "mypkg_cli_ux", raising=False)


def test_training_the_reference_model_is_announced(capsys, tmp_path, monkeypatch, restore_progress_logging):
    zoo.mnist1d_data()  # generated once per session cache; copied so only the model trains here
    data = next(zoo.cache_dir().glob("mnist1d-seed42.pt"))
    monkeypatch.setenv("HWSEARCH_CACHE", str(tmp_path))
    shutil.copy(data, tmp_path / data.name)
    cli._setup_logging(verbose=False)  # what `hwsearch ...` sets up
    zoo.mnist1d_cnn(width=4, epochs=2)
    out = capsys.readouterr().out
    assert "· training the reference model (width 4, 2 epochs; first run only)" in out, out
    assert "epoch 1/2: training loss" in out, out
    assert "trained the reference model in" in out and "validation accuracy" in out, out
    assert str(tmp_path) in out.replace("\n", "")  # where it is cached
    zoo.mnist1d_cnn(width=4, epochs=2)  # cached now: nothing to announce
    assert "training" not in capsys.readouterr().out
