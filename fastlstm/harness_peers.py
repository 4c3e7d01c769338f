"""The peers of the benchmark harness (:mod:`fastlstm.harness`): ``torch.nn.LSTM``
(:class:`TorchRunner`) and ONNX Runtime (:class:`OnnxRuntimeRunner`) run with the weights of
the case's params, timed beside fastlstm's backends. The harness's docstring describes modes,
backends and what a runner returns; :func:`fastlstm.harness.make_runner` builds these."""
from __future__ import annotations

import warnings

import numpy as np

from .harness import Case, Inputs, _check_call, default_torch_threads, host_array, supports

__all__ = ["TorchRunner", "OnnxRuntimeRunner"]


class TorchRunner:
    """``torch.nn.LSTM`` with the weights of ``inputs.params`` (its configuration: layers,
    directions, projection, bias, dtype): the one place the package drives torch's LSTM.

    Variable lengths go through ``pack_padded_sequence`` / ``pad_packed_sequence(total_length=T)``.
    ``train_fwd`` and ``fwd_bwd`` make ``x``, ``h0`` and ``c0`` autograd leaves; ``fwd_bwd`` then
    back-propagates ``dy``, ``dh`` and ``dc`` (the gradient of ``sum(y*dy) + sum(h*dh) +
    sum(c*dc)``). ``batch_first=True`` builds the module with ``batch_first`` and feeds it
    batch-first ``x`` and ``dy``; :meth:`outputs` are time-major either way. ``device="cuda"``
    runs on the GPU (inputs copied there once; every call ends with a synchronisation), with
    TF32 products allowed only when ``tf32=True``. ``threads`` sets torch's thread count.
    """

    def __init__(self, mode: str, inputs: Inputs, *, threads: int | None = None,
                 batch_first: bool = False, device: str = "cpu", tf32: bool = False):
        import torch
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
        _check_call(mode, inputs)
        self.torch = torch
        self._pack, self._pad = pack_padded_sequence, pad_packed_sequence
        if threads is not None:
            torch.set_num_threads(threads)
        p = inputs.params
        dev = torch.device(device)
        self.mode, self.batch_first, self.tf32 = mode, batch_first, tf32
        self.cuda = dev.type == "cuda"
        self.T = inputs.x.shape[0]
        tdt = getattr(torch, p.dtype.name)
        self.lstm = torch.nn.LSTM(p.input_size, p.hidden_size, p.num_layers, bias=p.bias,
                                  batch_first=batch_first, bidirectional=p.bidirectional,
                                  proj_size=p.proj_size, dtype=tdt, device=dev)
        # torch falls back from oneDNN for projections and says so once per process; noise here.
        warnings.filterwarnings("ignore", message="LSTM with projections is not supported")
        self.lstm.load_state_dict({k: torch.tensor(v) for k, v in p.state_dict().items()})
        self.lstm.train(mode != "infer")

        def bf(a):  # time-major -> the module's layout
            return a.swapaxes(0, 1) if batch_first else a

        def t(a):  # copies: the inputs stay NumPy-owned
            return None if a is None else torch.tensor(np.ascontiguousarray(a), dtype=tdt,
                                                       device=dev)

        self.x, self.h0, self.c0 = t(bf(inputs.x)), t(inputs.h0), t(inputs.c0)
        self.dy = None if inputs.dy is None else t(bf(inputs.dy))
        self.dh, self.dc = t(inputs.dh), t(inputs.dc)
        self.lengths = None if inputs.lengths is None else torch.as_tensor(
            np.asarray(inputs.lengths, np.int64))  # on the host, as packing wants

    def _forward(self, x, h0, c0):
        if self.lengths is None:
            y, (h, c) = self.lstm(x, (h0, c0))
            return y, h, c
        packed = self._pack(x, self.lengths, batch_first=self.batch_first, enforce_sorted=False)
        out, (h, c) = self.lstm(packed, (h0, c0))
        y, _ = self._pad(out, batch_first=self.batch_first, total_length=self.T)
        return y, h, c

    def __call__(self):
        torch = self.torch
        if self.cuda:
            torch.backends.cudnn.allow_tf32 = self.tf32
            torch.backends.cuda.matmul.allow_tf32 = self.tf32
        if self.mode == "infer":
            with torch.inference_mode():
                ret = self._forward(self.x, self.h0, self.c0) + (None,)
        else:
            for p in self.lstm.parameters():
                p.grad = None
            leaves = tuple(a.detach().requires_grad_(True) for a in (self.x, self.h0, self.c0))
            y, h, c = self._forward(*leaves)
            if self.mode == "fwd_bwd":
                torch.autograd.backward([y, h, c], [self.dy, self.dh, self.dc])
            ret = (y, h, c, leaves)
        if self.cuda:
            torch.cuda.synchronize()
        return ret

    def outputs(self, ret) -> dict[str, np.ndarray]:
        """y, h, c (and dx, dh0, dc0, d<param name> for fwd_bwd) as NumPy arrays, time-major."""
        y, h, c, leaves = ret

        def tm(a):  # batch-first results back to time-major
            return np.ascontiguousarray(a.swapaxes(0, 1)) if self.batch_first else a

        out = {"y": tm(host_array(y, "y")), "h": host_array(h, "h"), "c": host_array(c, "c")}
        if self.mode == "fwd_bwd":
            x, h0, c0 = leaves
            out.update(dx=tm(host_array(x.grad, "dx")), dh0=host_array(h0.grad, "dh0"),
                       dc0=host_array(c0.grad, "dc0"))
            out.update({"d" + k: host_array(p.grad, k) for k, p in self.lstm.named_parameters()})
        return out


class OnnxRuntimeRunner:
    """ONNX Runtime running the ONNX model of ``inputs.params`` (:meth:`LSTMParams.to_onnx
    <fastlstm.LSTMParams.to_onnx>`: one ``LSTM`` node per layer) in one CPU
    ``InferenceSession``, built once; a call is one ``session.run``.

    The model takes ``x`` time-major, ``initial_h`` / ``initial_c`` and, for variable lengths,
    ``sequence_lens`` (ONNX Runtime zeros the outputs past each sequence's end, as
    :func:`fastlstm.forward` does); :meth:`outputs` gives ``y`` (T, B, D*H), ``h``, ``c``.
    ``threads`` is the session's intra-op thread count (default: :func:`default_torch_threads`,
    the CPU backend's, so all backends get the same cores); inter-op parallelism is off (one
    thread), the graph runs its layers one after the other. Inference only, float32, no
    ``proj_size``: anything else raises ``ValueError`` with the reason of :func:`supports`.
    """

    def __init__(self, mode: str, inputs: Inputs, *, threads: int | None = None):
        _check_call(mode, inputs)
        p = inputs.params
        probe = Case("", 1, 1, p.input_size, p.hidden_size, p.num_layers,
                     bidirectional=p.bidirectional, proj_size=p.proj_size,
                     lengths=inputs.lengths is not None, dtype=p.dtype.name)
        reason = supports("onnxruntime", probe, mode)
        if reason:
            raise ValueError(reason)
        import onnxruntime as ort
        self.mode = mode
        self.threads = int(threads) if threads is not None else default_torch_threads()
        model = p.to_onnx(lengths=inputs.lengths is not None, initial_state=True)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        f32 = np.float32

        def c(a):  # copies: the inputs stay untouched
            return np.array(a, dtype=f32, order="C", copy=True)

        self.feeds = {"x": c(inputs.x), "initial_h": c(inputs.h0), "initial_c": c(inputs.c0)}
        if inputs.lengths is not None:
            self.feeds["sequence_lens"] = np.asarray(inputs.lengths, np.int32).copy()
        self.output_names = ["y", "h_n", "c_n"]

    def __call__(self):
        return self.session.run(self.output_names, self.feeds)

    def outputs(self, ret) -> dict[str, np.ndarray]:
        """y (T, B, D*H), h, c (L*D, B, H) as NumPy arrays, time-major."""
        y, h, c = ret
        return {"y": np.asarray(y), "h": np.asarray(h), "c": np.asarray(c)}
