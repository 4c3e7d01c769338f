"""The README's usage example runs as written and its stated shapes hold."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_usage_example_runs_and_shapes_match():
    pytest.importorskip("torch")
    blocks = _python_blocks()
    assert blocks, "README has no python example"
    ns = {}
    exec(compile(blocks[0], str(README), "exec"), ns)
    assert ns["out"].y.shape == (100, 8, 128)
    assert ns["out"].h.shape == (4, 8, 64)
    assert ns["grads"].dx.shape == (100, 8, 32)
    assert ns["grads"].dparams["weight_hh_l1_reverse"].shape == (256, 64)
    assert ns["y"].shape == (8, 100, 64)
    # the shapes written in the README's comments are the ones computed
    for expr, shape in re.findall(r"^(\S+)\.shape\s+# (\([\d, ]+\))", blocks[0], flags=re.M):
        assert str(eval(expr + ".shape", ns)) == shape, expr
