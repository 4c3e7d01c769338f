"""fastlstm: compiled LSTM kernels (Numba CPU, numba.cuda GPU) with torch.nn.LSTM's math."""
from . import config
from .api import LSTM, BackwardResult, ForwardResult, LSTMCache, backward, forward, warmup
from .dispatch import available_devices
from .params import LSTMParams
from .stepper import Stepper

__version__ = "0.1.0"


def release_workspace() -> None:
    """Free the CPU backend's per-thread scratch buffers (they are reused across calls)."""
    from .backends.cpu import release_workspace as release
    release()


__all__ = ["LSTM", "LSTMParams", "forward", "backward", "warmup", "ForwardResult",
           "BackwardResult", "LSTMCache", "Stepper", "available_devices", "release_workspace",
           "config", "__version__"]
