"""Smoke runs of the examples with a few steps: each runs, its loss falls, its files are
written."""
import importlib.util
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script, *args, cwd):
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *map(str, args)],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_rnn_vs_lstm(tmp_path):
    pytest.importorskip("matplotlib")
    out = _run("rnn_vs_lstm.py", "--T", 12, "--epochs", 3, "--steps", 30, "--batch", 32,
               "--out", tmp_path / "curves.png", cwd=tmp_path)
    assert (tmp_path / "curves.png").stat().st_size > 1000
    lstm = float(re.search(r"final LSTM test MSE ([\d.]+)", out).group(1))
    assert lstm < 0.1667  # below predicting the mean: it learns


def test_char_lm(tmp_path):
    out = _run("char_lm.py", "--hidden", 32, "--layers", 1, "--epochs", 3, "--steps-per-epoch", 8,
               "--max-chars", 20000, "--sample-chars", 40, "--out", tmp_path / "model",
               cwd=tmp_path)
    losses = [float(x) for x in re.findall(r"loss ([\d.]+)", out)]
    assert len(losses) >= 2 and losses[-1] < losses[0], out
    assert (tmp_path / "model" / "lstm.npz").exists() and (tmp_path / "model" / "head.npz").exists()


@pytest.mark.skipif(importlib.util.find_spec("vega_datasets") is None,
                    reason="vega_datasets (its bundled stock prices) is not installed")
def test_stock_forecast(tmp_path):
    pytest.importorskip("matplotlib")
    out = _run("stock_forecast.py", "--epochs", 3, "--png", tmp_path / "f.png", cwd=tmp_path)
    assert "test RMSE" in out and "naive" in out
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert np.isfinite(float(re.search(r"LSTM \$([\d.]+)", out).group(1)))
