"""fastlstm: compiled LSTM kernels (Numba CPU, numba.cuda GPU) with torch.nn.LSTM's math."""
from .api import LSTM, BackwardResult, ForwardResult, LSTMCache, backward, forward
from .dispatch import available_devices
from .params import LSTMParams

__version__ = "0.1.0"

__all__ = ["LSTM", "LSTMParams", "forward", "backward", "ForwardResult", "BackwardResult",
           "LSTMCache", "available_devices", "__version__"]
