"""The adding problem: a long-range dependency an LSTM learns and a plain tanh RNN does not.

Each sequence has T steps of two inputs: a value ~ U(0, 1) and a marker that is 1 at exactly
two steps (one in the first half, one in the second) and 0 elsewhere. The target is the sum of
the two marked values, read from the network's last step through a linear readout (MSE).
Predicting the mean (1.0) scores Var(u1 + u2) = 1/6 ~ 0.167: a model that cannot carry
information across ~T/2 steps stays near that line.

Both models are trained the same way: the same data, Adam (written out below), global
gradient-norm clipping, a linear readout of the last hidden state. The LSTM is
``fastlstm.forward``/``fastlstm.backward`` with ``LSTMParams.update_``; the RNN is
``fastlstm.rnn``. Prints each epoch's test MSE of both and writes a plot of the curves.

    python examples/rnn_vs_lstm.py --out curves.png
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

import fastlstm
from fastlstm.rnn import RNNParams, rnn_backward, rnn_forward

BASELINE = 1.0 / 6.0  # MSE of always predicting E[u1 + u2] = 1


def adding_batch(rng, T: int, B: int, dtype):
    """``x`` (T, B, 2) and targets (B,)."""
    values = rng.uniform(0.0, 1.0, size=(T, B))
    marks = np.zeros((T, B))
    first = rng.integers(0, T // 2, size=B)
    second = rng.integers(T // 2, T, size=B)
    cols = np.arange(B)
    marks[first, cols] = 1.0
    marks[second, cols] = 1.0
    x = np.stack([values, marks], axis=2).astype(dtype)
    y = (values[first, cols] + values[second, cols]).astype(dtype)
    return x, y


class Adam:
    """Adam over named arrays; ``step(grads)`` returns the update to subtract (lr included)."""

    def __init__(self, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps
        self.m, self.v, self.t = {}, {}, 0

    def step(self, grads: dict) -> dict:
        self.t += 1
        c1, c2 = 1 - self.b1 ** self.t, 1 - self.b2 ** self.t
        out = {}
        for k, g in grads.items():
            m = self.m.setdefault(k, np.zeros_like(g))
            v = self.v.setdefault(k, np.zeros_like(g))
            m *= self.b1
            m += (1 - self.b1) * g
            v *= self.b2
            v += (1 - self.b2) * g * g
            out[k] = self.lr * (m / c1) / (np.sqrt(v / c2) + self.eps)
        return out


def clip(grads: dict, max_norm: float) -> dict:
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    if norm > max_norm:
        return {k: g * (max_norm / norm) for k, g in grads.items()}
    return grads


class Model:
    """A recurrent layer (``kind`` "lstm" or "rnn") plus a linear readout of its last state."""

    def __init__(self, kind: str, hidden: int, dtype, seed: int):
        self.kind = kind
        if kind == "lstm":
            self.params = fastlstm.LSTMParams.init(2, hidden, dtype=dtype, seed=seed)
        else:
            self.params = RNNParams.init(2, hidden, dtype=dtype, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.head = {"w": (rng.uniform(-1, 1, hidden) / math.sqrt(hidden)).astype(dtype),
                     "b": np.ones(1, dtype)}
        self.opt = Adam(lr=0.0)

    def last_state(self, x, training: bool):
        if self.kind == "lstm":
            out = fastlstm.forward(x, self.params, training=training, device="cpu")
            return out.h[-1], out.cache
        _, h_n, cache = rnn_forward(x, self.params, training=training)
        return h_n[-1], cache

    def predict(self, x):
        h, _ = self.last_state(x, training=False)
        return h @ self.head["w"] + self.head["b"][0]

    def train_step(self, x, target, clip_norm: float) -> float:
        h, cache = self.last_state(x, training=True)
        pred = h @ self.head["w"] + self.head["b"][0]
        err = pred - target
        loss = float(np.mean(err * err))
        dpred = (2.0 / len(target)) * err                     # (B,)
        grads = {"head.w": h.T @ dpred, "head.b": np.array([dpred.sum()], h.dtype)}
        dh = np.zeros((1,) + h.shape, h.dtype)
        dh[0] = np.outer(dpred, self.head["w"])
        if self.kind == "lstm":
            rec = fastlstm.backward(cache, dh=dh).dparams
        else:
            rec = rnn_backward(cache, None, dh)[2]
        grads.update(rec)
        steps = self.opt.step(clip(grads, clip_norm))
        self.head["w"] -= steps.pop("head.w").astype(h.dtype)
        self.head["b"] -= steps.pop("head.b").astype(h.dtype)
        self.params.update_(steps, 1.0)
        return loss


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=60, help="sequence length")
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--steps", type=int, default=100, help="updates per epoch")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="curves.png", help="PNG of both loss curves ('' for none)")
    args = ap.parse_args(argv)
    dtype = np.float32

    test_x, test_y = adding_batch(np.random.default_rng(10_000 + args.seed), args.T, 1000, dtype)
    models = {k: Model(k, args.hidden, dtype, args.seed) for k in ("lstm", "rnn")}
    for m in models.values():
        m.opt.lr = args.lr
    fastlstm.warmup(dtypes=("float32",))  # compile (or load) the LSTM kernels before timing

    def test_mse(m):
        e = m.predict(test_x) - test_y
        return float(np.mean(e * e))

    curves = {k: [test_mse(m)] for k, m in models.items()}
    seconds = {k: 0.0 for k in models}
    print(f"adding problem, T={args.T}, hidden={args.hidden}, batch={args.batch}, "
          f"{args.epochs} epochs x {args.steps} Adam steps (lr={args.lr}); "
          f"baseline MSE (predict the mean) = {BASELINE:.4f}")
    print(f"{'epoch':>5} {'LSTM train':>11} {'LSTM test':>10} {'RNN train':>10} {'RNN test':>9}"
          "   (MSE; train = mean over the epoch's batches)")
    print(f"{0:>5} {'':>11} {curves['lstm'][0]:>10.4f} {'':>10} {curves['rnn'][0]:>9.4f}")
    for epoch in range(1, args.epochs + 1):
        rng = np.random.default_rng(args.seed * 1_000_003 + epoch)
        batches = [adding_batch(rng, args.T, args.batch, dtype) for _ in range(args.steps)]
        train = {}
        for k, m in models.items():  # same batches for both
            t0 = time.perf_counter()
            train[k] = float(np.mean([m.train_step(x, y, args.clip) for x, y in batches]))
            seconds[k] += time.perf_counter() - t0
            curves[k].append(test_mse(m))
        print(f"{epoch:>5} {train['lstm']:>11.4f} {curves['lstm'][-1]:>10.4f} "
              f"{train['rnn']:>10.4f} {curves['rnn'][-1]:>9.4f}", flush=True)

    for k, name in (("lstm", "LSTM"), ("rnn", "RNN")):
        final = curves[k][-1]
        print(f"final {name:<4} test MSE {final:.4f} = {final / BASELINE:.2f} x baseline "
              f"{BASELINE:.4f} (training {seconds[k]:.1f} s)")

    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        epochs = np.arange(args.epochs + 1)
        ax.plot(epochs, curves["lstm"], "o-", label="LSTM (fastlstm)")
        ax.plot(epochs, curves["rnn"], "s-", label="tanh RNN (fastlstm.rnn)")
        ax.axhline(BASELINE, color="gray", ls="--", label="predict the mean (1/6)")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("test MSE")
        ax.set_title(f"Adding problem, T = {args.T}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
