"""Host-side backend adapters: normalised arrays in, the backend contract out.

Every backend module (``fastlstm.reference``, ``fastlstm.backends.cpu``,
``fastlstm.backends.cuda``) provides::

    lstm_forward(x, params, h0, c0, lengths, masks, training) -> (y, h_n, c_n, state, paths)
    lstm_backward(state, dy, dh_n, dc_n) -> (dx, dh0, dc0, dparams)

on time-major, C-contiguous arrays of the compute dtype (host arrays for ``reference`` and
``cpu``; device arrays for ``cuda``)::

    x (T, B, I)   h0 (L*D, B, H_out)   c0 (L*D, B, H)   lengths (B,) int64
    masks: None or L-1 arrays (T, B, D*H_out), inter-layer dropout already scaled
    y (T, B, D*H_out)   h_n, c_n like h0, c0

``state`` is a :class:`~fastlstm.backends.state.TrainingState` (None unless ``training``),
``paths`` the recurrence path each layer took (e.g. ``"serial"``/``"parallel"`` on the CPU,
``"multi"``/``"persistent"`` on the GPU), ``dparams`` the gradients under PyTorch's names.
"""
