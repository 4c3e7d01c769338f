"""pytest-benchmark suites of fastlstm (run with ``pytest bench``; see bench/conftest.py)."""
