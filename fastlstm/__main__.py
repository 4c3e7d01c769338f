"""``python -m fastlstm``: the command line of :mod:`fastlstm.cli`."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
