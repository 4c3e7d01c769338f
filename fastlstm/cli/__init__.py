"""The command line: ``python -m fastlstm`` and the ``fastlstm`` console script.

    python -m fastlstm            forward+backward on a default configuration, every backend:
                                  errors vs the reference (PASS/FAIL), median times, speedups
    python -m fastlstm bench      a benchmark grid (quick preset; --full for the whole registry)
    python -m fastlstm info       versions, BLAS, Numba threading and cache, CPU, GPU
    python -m fastlstm check      every backend vs the reference on small configurations
    python -m fastlstm convert    LSTM weights between .pt, .keras/.h5, .onnx and .npz files

One module per command (``run``: the default job, ``bench``, ``info``, ``check``, ``convert``); ``common``
holds option parsing and the check-then-time measurement, ``format`` the text output. Cases,
runners, comparison and timing come from :mod:`fastlstm.harness`.

Exit status: 0 success, 1 a result did not match the reference, 2 a usage error (or a missing
optional dependency such as matplotlib for --plot).
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from . import bench, check, convert, info, run
from .common import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, PROG, UsageError

__all__ = ["main", "build_parser", "UsageError", "EXIT_OK", "EXIT_MISMATCH", "EXIT_USAGE"]

_COMMANDS = {None: run.main, "bench": bench.main, "info": info.main, "check": check.main,
             "convert": convert.main}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=run.DESCRIPTION,
        epilog=f"Exit status: {EXIT_OK} ok, {EXIT_MISMATCH} a mismatch against the reference, "
               f"{EXIT_USAGE} a usage error.")
    p.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    run.add_arguments(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    bench.add_parser(sub)
    info.add_parser(sub)
    check.add_parser(sub)
    convert.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout went away (e.g. `| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
