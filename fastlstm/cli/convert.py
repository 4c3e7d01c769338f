"""``python -m fastlstm convert IN OUT [--check]``: LSTM weights between file formats."""
from __future__ import annotations

from .common import EXIT_MISMATCH, EXIT_OK, UsageError

__all__ = ["add_parser", "main"]


def add_parser(sub) -> None:
    c = sub.add_parser("convert", help="convert LSTM weights between torch, Keras, ONNX and .npz files",
                       description="Convert LSTM weights between file formats, chosen by extension: "
                                   ".pt/.pth (torch state dict), .keras/.h5/.hdf5 (Keras model), "
                                   ".onnx, .npz (LSTMParams.save).")
    c.add_argument("src", metavar="IN", help="the file to read")
    c.add_argument("dst", metavar="OUT", help="the file to write (overwritten)")
    c.add_argument("--check", action="store_true",
                   help="run both files, each in its own framework, on the same random input and "
                        "report the largest difference; exit 1 above the tolerance")
    c.add_argument("--prefix", metavar="PREFIX",
                   help="for a .pt input: the key prefix of the LSTM in a whole model's state dict")


def main(args) -> int:
    from ..files import convert_file
    try:
        report = convert_file(args.src, args.dst, check=args.check, prefix=args.prefix)
    except (ValueError, KeyError, TypeError, OSError, ImportError) as exc:
        raise UsageError(str(exc)) from exc
    print(report)
    return EXIT_OK if report.ok else EXIT_MISMATCH
