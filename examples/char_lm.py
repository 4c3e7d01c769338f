"""A character-level language model trained with fastlstm on the Python documentation's topic
texts (the standard library's ``pydoc_data.topics``: no download).

One-hot characters -> 2-layer LSTM (fastlstm.forward / backward) -> dense + softmax
cross-entropy (fastlstm.head, fused) ; Adam with gradient clipping (fastlstm.train). Then the
model is saved (LSTMParams.save + the head's arrays) and text is sampled one character at a
time with fastlstm.Stepper and fastlstm.head.dense_softmax.

    python examples/char_lm.py                      # ~1 minute on 2 cores
    python examples/char_lm.py --compare-torch      # also time the same model in torch
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fastlstm
from fastlstm import head, train


def load_text(max_chars: int) -> str:
    from pydoc_data.topics import topics
    return "\n".join(topics[k] for k in sorted(topics))[:max_chars]


def one_hot(idx: np.ndarray, V: int, dtype) -> np.ndarray:
    out = np.zeros(idx.shape + (V,), dtype)
    np.put_along_axis(out, idx[..., None], 1, axis=-1)
    return out


def batches(data: np.ndarray, T: int, B: int, rng):
    starts = rng.integers(0, len(data) - T - 1, B)
    idx = np.stack([data[s:s + T + 1] for s in starts], axis=1)  # (T+1, B) time-major
    return idx[:-1], idx[1:]


def sample(params, W, b, chars, prime: str, n: int, temperature: float, rng) -> str:
    V = len(chars)
    lookup = {ch: i for i, ch in enumerate(chars)}
    s = fastlstm.Stepper(params, batch_size=1)
    y = None
    for ch in prime:
        y = s.step(one_hot(np.array([lookup.get(ch, 0)]), V, params.dtype))
    out = []
    for _ in range(n):
        p = head.dense_softmax(y, W, b, temperature=temperature)[0].astype(np.float64)
        i = int(rng.choice(V, p=p / p.sum()))
        out.append(chars[i])
        y = s.step(one_hot(np.array([i]), V, params.dtype))
    return prime + "".join(out)


def torch_tokens_per_s(V, H, layers, T, B, data, steps, lr, rng) -> float:
    import torch
    lstm = torch.nn.LSTM(V, H, num_layers=layers)
    lin = torch.nn.Linear(H, V)
    opt = torch.optim.Adam(list(lstm.parameters()) + list(lin.parameters()), lr=lr)
    t0 = None
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()
        xi, ti = batches(data, T, B, rng)
        x = torch.from_numpy(one_hot(xi, V, np.float32))
        y, _ = lstm(x)
        loss = torch.nn.functional.cross_entropy(lin(y).reshape(-1, V), torch.from_numpy(ti.reshape(-1)))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(lstm.parameters()) + list(lin.parameters()), 1.0)
        opt.step()
    return steps * T * B / (time.perf_counter() - t0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--steps-per-epoch", type=int, default=40)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--max-chars", type=int, default=300_000)
    ap.add_argument("--sample-chars", type=int, default=300)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--out", default="char_lm_model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare-torch", action="store_true")
    args = ap.parse_args(argv)

    text = load_text(args.max_chars)
    chars = sorted(set(text))
    V = len(chars)
    data = np.searchsorted(np.array(chars), np.array(list(text)))
    print(f"text: {len(text):,} characters, vocabulary {V}")

    rng = np.random.default_rng(args.seed)
    dt = np.float32
    params = fastlstm.LSTMParams.init(V, args.hidden, num_layers=args.layers, dtype=dt, seed=args.seed)
    k = 1 / np.sqrt(args.hidden)
    W = rng.uniform(-k, k, (V, args.hidden)).astype(dt)
    b = np.zeros(V, dt)
    opt = train.Adam([params, W, b], lr=args.lr)
    T, B = args.seq_len, args.batch

    total_t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for _ in range(args.steps_per_epoch):
            xi, ti = batches(data, T, B, rng)
            out = fastlstm.forward(one_hot(xi, V, dt), params, training=True)
            res = head.dense_softmax_xent(out.y, W, b, ti)
            dy, dW, db = head.dense_softmax_xent_backward(res.cache)
            g = fastlstm.backward(out.cache, dy=dy)
            grads = [g.dparams, dW, db]
            train.clip_grad_norm(grads, args.clip)
            opt.step(grads)
            losses.append(res.loss)
        sec = time.perf_counter() - t0
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.3f}  "
              f"({args.steps_per_epoch * T * B / sec:,.0f} tokens/s, {sec:.1f} s)", flush=True)
    print(f"trained in {time.perf_counter() - total_t0:.1f} s")

    os.makedirs(args.out, exist_ok=True)
    params.save(os.path.join(args.out, "lstm.npz"))
    np.savez(os.path.join(args.out, "head.npz"), W=W, b=b, chars=np.array(chars))
    print(f"saved {args.out}/lstm.npz and {args.out}/head.npz")

    params2 = fastlstm.LSTMParams.load(os.path.join(args.out, "lstm.npz"))
    print("--- sample ---")
    print(sample(params2, W, b, chars, "The ", args.sample_chars, args.temperature, rng))
    print("--------------")

    if args.compare_torch:
        try:
            import torch
        except ImportError:
            print("--compare-torch: torch is not installed")
            return
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        steps = 10
        tps = torch_tokens_per_s(V, args.hidden, args.layers, T, B, data, steps, args.lr, rng)
        t0 = time.perf_counter()
        for _ in range(steps):
            xi, ti = batches(data, T, B, rng)
            out = fastlstm.forward(one_hot(xi, V, dt), params, training=True)
            res = head.dense_softmax_xent(out.y, W, b, ti)
            dy, dW, db = head.dense_softmax_xent_backward(res.cache)
            g = fastlstm.backward(out.cache, dy=dy)
            train.clip_grad_norm([g.dparams, dW, db], args.clip)
            opt.step([g.dparams, dW, db])
        ours = steps * T * B / (time.perf_counter() - t0)
        print(f"training step, tokens/s: fastlstm {ours:,.0f}, torch {tps:,.0f} ({ours / tps:.2f}x)")


if __name__ == "__main__":
    main()
