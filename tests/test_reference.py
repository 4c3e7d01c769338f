"""The NumPy reference's gradients, checked by central finite differences in float64."""
import numpy as np
import pytest

import fastlstm
from fastlstm import LSTMParams

from helpers import Config, make_problem

CONFIGS = [
    Config(T=4, B=2, I=3, H=4),
    Config(T=4, B=3, I=3, H=4, lengths=True),
    Config(T=3, B=2, I=2, H=4, L=2, bidirectional=True, lengths=True),
    Config(T=3, B=2, I=3, H=5, proj=2, bidirectional=True),
    Config(T=4, B=2, I=3, H=4, bias=False, L=2, proj=3, lengths=True),
]


def _loss(p, params, x, h0, c0, seed=None, dropout=0.0):
    r = fastlstm.forward(x, params, h0, c0, lengths=p.lengths, device="reference",
                         training=dropout > 0, dropout=dropout, seed=seed)
    return float(np.sum(r.y * p.dy) + np.sum(r.h * p.dh) + np.sum(r.c * p.dc))


def _directional_fd(f, a, v, eps=1e-6):
    return (f(a + eps * v) - f(a - eps * v)) / (2 * eps)


CASES = [(c, 0.0) for c in CONFIGS] + [(c, 0.4) for c in CONFIGS if c.L > 1]  # dropout: L > 1


@pytest.mark.parametrize("cfg, dropout", CASES, ids=lambda v: str(v))
def test_reference_gradients_match_finite_differences(cfg, dropout):
    p = make_problem(cfg, np.float64, seed=11)
    seed = 5
    fwd = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, training=True,
                           dropout=dropout, seed=seed, device="reference")
    g = fastlstm.backward(fwd.cache, p.dy, p.dh, p.dc)
    rng = np.random.default_rng(0)

    def check(analytic, fd_of, shape):
        for _ in range(2):
            v = rng.standard_normal(shape)
            fd = fd_of(v)
            an = float(np.sum(analytic * v))
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (fd, an)

    check(g.dx, lambda v: _directional_fd(lambda a: _loss(p, p.params, a, p.h0, p.c0, seed, dropout), p.x, v), p.x.shape)
    check(g.dh0, lambda v: _directional_fd(lambda a: _loss(p, p.params, p.x, a, p.c0, seed, dropout), p.h0, v), p.h0.shape)
    check(g.dc0, lambda v: _directional_fd(lambda a: _loss(p, p.params, p.x, p.h0, a, seed, dropout), p.c0, v), p.c0.shape)
    sd = p.params.state_dict()
    for name, arr in sd.items():
        def f(a, name=name):
            return _loss(p, LSTMParams.from_state_dict({**sd, name: a}), p.x, p.h0, p.c0, seed, dropout)
        check(g.dparams[name], lambda v: _directional_fd(f, arr, v), arr.shape)


def test_reference_padded_steps_are_exact_zeros_and_states_stop():
    p = make_problem(Config(T=6, B=4, I=3, H=4, bidirectional=True, lengths=True), np.float64)
    r = fastlstm.forward(p.x, p.params, p.h0, p.c0, lengths=p.lengths, device="reference")
    for b, n in enumerate(p.lengths):
        assert np.all(r.y[n:, b] == 0.0)
        # The sequence alone, cut to its length, gives the same outputs and final state.
        alone = fastlstm.forward(p.x[:n, b:b + 1], p.params, p.h0[:, b:b + 1], p.c0[:, b:b + 1],
                                 device="reference")
        np.testing.assert_allclose(r.y[:n, b], alone.y[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r.h[:, b], alone.h[:, 0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r.c[:, b], alone.c[:, 0], rtol=1e-12, atol=1e-14)
