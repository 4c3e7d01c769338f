"""Next-month stock price forecasting with an LSTM and a dense regression head (fastlstm).

Data: the monthly closing prices of five stocks, 2000-2010, shipped with the ``vega_datasets``
package (``pip install vega_datasets``; read from the package, no download). Each stock is
scaled by its training-period mean and standard deviation; windows of ``--window`` months
predict the change to the next month (forecast = this month + predicted change); the split is by time (the last ``--test-months`` months of every stock
are the test set). The model: 1-layer LSTM -> dense (fastlstm.head.dense_mse), Adam.

The test RMSE (in dollars) is printed next to the naive forecast "next month = this month",
which is hard to beat on prices; a PNG shows forecast against actual.

    python examples/stock_forecast.py               # a few seconds on 2 cores; writes stock_forecast.png
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastlstm
from fastlstm import head, train


def load_prices():
    from vega_datasets import data
    df = data.stocks()
    series = {s: df[df["symbol"] == s].sort_values("date") for s in sorted(df["symbol"].unique())}
    n = max(len(v) for v in series.values())
    symbols = [s for s in series if len(series[s]) == n]  # GOOG starts in 2004: left out
    prices = np.stack([series[s]["price"].to_numpy()[-n:] for s in symbols], axis=1)  # (M, S)
    dates = series[symbols[0]]["date"].to_numpy()[-n:]
    return symbols, dates, prices.astype(np.float64)


def windows(z: np.ndarray, window: int, first: int, last: int):
    """Inputs (window, N, 1) time-major and targets (N, 1) for predicted months first..last-1."""
    xs, ys = [], []
    for t in range(max(first, window), last):
        xs.append(z[t - window:t])          # (window, S)
        ys.append(z[t] - z[t - 1])          # (S,) the change over the month
    x = np.stack(xs, axis=1)                # (window, n, S)
    y = np.stack(ys, axis=0)                # (n, S)
    W, n, S = x.shape
    return x.reshape(W, n * S, 1), y.reshape(n * S, 1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--test-months", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="stock_forecast.png")
    args = ap.parse_args(argv)

    symbols, dates, prices = load_prices()
    M, S = prices.shape
    split = M - args.test_months
    mu, sd = prices[:split].mean(axis=0), prices[:split].std(axis=0)
    z = (prices - mu) / sd
    x_tr, y_tr = windows(z, args.window, 0, split)
    x_te, y_te = windows(z, args.window, split, M)
    print(f"{', '.join(symbols)}: {M} months ({str(dates[0])[:7]} .. {str(dates[-1])[:7]}); "
          f"train {y_tr.shape[0]} windows, test {y_te.shape[0]} (last {args.test_months} months)")

    rng = np.random.default_rng(args.seed)
    params = fastlstm.LSTMParams.init(1, args.hidden, dtype=np.float64, seed=args.seed)
    W = rng.uniform(-0.1, 0.1, (1, args.hidden))
    b = np.zeros(1)
    opt = train.Adam([params, W, b], lr=args.lr)

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        out = fastlstm.forward(x_tr, params, training=True)
        res = head.dense_mse(out.y[-1], W, b, y_tr)      # the last step's output predicts
        dy_last, dW, db = head.dense_mse_backward(res.cache)
        dy = np.zeros_like(out.y)
        dy[-1] = dy_last
        g = fastlstm.backward(out.cache, dy=dy)
        train.clip_grad_norm([g.dparams, dW, db], 1.0)
        opt.step([g.dparams, dW, db])
        if epoch % max(1, args.epochs // 8) == 0 or epoch == 1:
            print(f"epoch {epoch:4d}  train mse (scaled) {res.loss:.4f}", flush=True)
    print(f"trained in {time.perf_counter() - t0:.1f} s")

    naive = x_te[-1, :, 0].reshape(-1, S)                 # this month's price
    pred = naive + head.dense(fastlstm.forward(x_te, params).y[-1], W, b).reshape(-1, S)
    actual = naive + y_te.reshape(-1, S)
    to_usd = lambda a: a * sd + mu                       # noqa: E731
    rmse = lambda a: float(np.sqrt(np.mean((to_usd(a) - to_usd(actual)) ** 2)))  # noqa: E731
    print(f"test RMSE: LSTM ${rmse(pred):.2f}   naive (next = this month) ${rmse(naive):.2f}")
    for s, sym in enumerate(symbols):
        e = np.sqrt(np.mean((to_usd(pred)[:, s] - to_usd(actual)[:, s]) ** 2))
        en = np.sqrt(np.mean((to_usd(naive)[:, s] - to_usd(actual)[:, s]) ** 2))
        print(f"  {sym:5s} LSTM ${e:7.2f}   naive ${en:7.2f}")

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(S, 1, figsize=(8, 2.2 * S), sharex=True)
    test_dates = dates[M - actual.shape[0]:]
    for s, ax in enumerate(np.atleast_1d(axes)):
        ax.plot(dates, prices[:, s], color="0.7", label="price")
        ax.plot(test_dates, to_usd(actual)[:, s], "k", label="actual (test)")
        ax.plot(test_dates, to_usd(pred)[:, s], "C1", label="LSTM forecast")
        ax.plot(test_dates, to_usd(naive)[:, s], "C0--", lw=0.8, label="naive")
        ax.set_ylabel(f"{symbols[s]} $")
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
