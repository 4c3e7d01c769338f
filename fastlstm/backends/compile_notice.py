"""One line on stderr when fastlstm's kernels compile (a cold cache: first use after install
or upgrade), so a first call that takes seconds does not look hung. Warm calls load the
compiled code from Numba's disk cache and print nothing.

Numba fires its ``numba:compile`` event only for a real compilation (a cache miss); the
listener below looks at the compiled function's module and prints once per process and
target.
"""
from __future__ import annotations

import sys
import threading

from numba.core import event

__all__ = ["announce_compiles"]

_MESSAGES = {
    "fastlstm.kernels.cpu": "fastlstm: compiling the CPU kernels (first use; cached afterwards)...",
    "fastlstm.kernels.cuda": "fastlstm: compiling the CUDA kernels (first use in this process)...",
}


class _Notice(event.Listener):
    def __init__(self):
        self.said = set()
        self.lock = threading.Lock()

    def on_start(self, ev):
        disp = (ev.data or {}).get("dispatcher")
        module = getattr(getattr(disp, "py_func", None), "__module__", "") or ""
        for prefix, message in _MESSAGES.items():
            if module.startswith(prefix):
                with self.lock:
                    if prefix in self.said:
                        return
                    self.said.add(prefix)
                if prefix.endswith("cpu") and _no_disk_cache():
                    message = message.replace("cached afterwards", "no disk cache: every process")
                print(message, file=sys.stderr, flush=True)
                return

    def on_end(self, ev):
        pass


def _no_disk_cache() -> bool:
    from ..kernels.cpu.jit import disk_cache_disabled
    return disk_cache_disabled()


_listener = None
_install_lock = threading.Lock()


def announce_compiles() -> None:
    """Register the listener (once per process)."""
    global _listener
    with _install_lock:
        if _listener is None:
            _listener = _Notice()
            event.register("numba:compile", _listener)
