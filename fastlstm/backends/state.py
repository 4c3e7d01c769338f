"""The training state a forward leaves for its backward: typed, and flat when needed.

A :class:`TrainingState` holds only arrays and a few integers. :meth:`TrainingState.flatten`
gives them as a tuple of arrays plus a tuple of ints, and :meth:`TrainingState.unflatten`
rebuilds the state from exactly those (and the parameters): the form a framework's operator
needs to carry the state between its forward and its backward (one reserve, as
``aten._cudnn_rnn`` has).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["LayerState", "TrainingState"]

_BACKENDS = ("reference", "cpu", "cuda")
_PATHS = ("reference", "serial", "parallel", "multi", "persistent", "auto")


@dataclass(frozen=True, eq=False)
class LayerState:
    """What one layer keeps for backward (arrays of the backend's memory: host or device).

    ``x`` (T, B, I_l)   the layer's input, or None where ``xh`` holds it
    ``y`` (T, B, D*H_out)  the layer's output, or None where ``xh`` holds it
    ``gates``  per direction (T, B, 4H) activated gates (one (T, B, D*4H) array on the GPU)
    ``cells``  per direction (T, B, H) cell states (one (T, B, D*H) array on the GPU)
    ``xh``     per task (T, b1 - b0, I_l + H_out): the ``[x_t | h_prev]`` rows of its
               weight-gradient GEMM, written by the forward (CPU parallel path)
    ``tasks``  per entry of ``xh``: (direction, b0, b1)
    """
    x: Any = None
    y: Any = None
    gates: tuple = ()
    cells: tuple = ()
    xh: tuple = ()
    tasks: tuple = ()


@dataclass(frozen=True, eq=False)
class TrainingState:
    """A training forward's saved state. ``params`` are the weights it ran with; ``version``
    their :attr:`~fastlstm.LSTMParams.version` then (backward refuses a later one)."""
    backend: str
    params: Any = field(repr=False)
    version: int
    layers: tuple
    h0: Any
    c0: Any
    lengths: Any
    masks: tuple = ()
    paths: tuple = ()

    def flatten(self) -> tuple[tuple, tuple]:
        """``(arrays, ints)``: every array of the state in a fixed order, and the integers
        that say how to put them back together (:meth:`unflatten`)."""
        arrays = [self.h0, self.c0, self.lengths, *self.masks]
        ints = [_BACKENDS.index(self.backend), self.version, len(self.masks), len(self.layers),
                *(_PATHS.index(p) for p in self.paths)]
        for layer in self.layers:
            ints += [layer.x is not None, layer.y is not None, len(layer.gates),
                     len(layer.cells), len(layer.xh)]
            for task in layer.tasks:
                ints += list(task)
            arrays += [a for a in (layer.x, layer.y) if a is not None]
            arrays += [*layer.gates, *layer.cells, *layer.xh]
        return tuple(arrays), tuple(int(i) for i in ints)

    @classmethod
    def unflatten(cls, arrays, ints, params) -> "TrainingState":
        """The state that :meth:`flatten` gave ``(arrays, ints)`` for, on ``params``."""
        arrays, ints = list(arrays), [int(i) for i in ints]
        a = iter(arrays)
        n = iter(ints)
        backend, version, n_masks, n_layers = (_BACKENDS[next(n)], next(n), next(n), next(n))
        paths = tuple(_PATHS[next(n)] for _ in range(n_layers))
        h0, c0, lengths = next(a), next(a), next(a)
        masks = tuple(next(a) for _ in range(n_masks))
        layers = []
        for _ in range(n_layers):
            has_x, has_y, ng, nc, nxh = (next(n) for _ in range(5))
            tasks = tuple((next(n), next(n), next(n)) for _ in range(nxh))
            x = next(a) if has_x else None
            y = next(a) if has_y else None
            gates = tuple(next(a) for _ in range(ng))
            cells = tuple(next(a) for _ in range(nc))
            xh = tuple(next(a) for _ in range(nxh))
            layers.append(LayerState(x, y, gates, cells, xh, tasks))
        if next(a, None) is not None or next(n, None) is not None:
            raise ValueError("flattened training state: more arrays or integers than it describes")
        return cls(backend, params, version, tuple(layers), h0, c0, lengths, masks, paths)
