"""The multi-layer perceptron mapped onto tiles: ReLU hidden layers, softmax cross-entropy output.

Layer l computes pre-activations z_l = W_lᵀ [x_l; 1] on tile l (the bias is the last row); hidden layers use
ReLU. For the loss L = −Σ log softmax(z)_y the output delta is δ = softmax(z) − onehot(y), and hidden deltas
are δ_l = (W_{l+1} δ_{l+1})[:n] ⊙ 1[z_l > 0], computed on the array with ``read_vmm_t``. The batch gather,
the ReLU, the bias input and the scaling to volts of each layer's input are one pass of the controller
(:meth:`Controller.forward_inputs`), and so are the gate and the rescaling of the backward read
(:meth:`Controller.backward_relu`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from crossbar_ctl.controller import Controller


def layer_sizes(n_inputs: int, hidden: list[int], n_classes: int) -> list[tuple[int, int]]:
    """(inputs incl. bias, outputs) per layer: 784-100-10 gives [(785, 100), (101, 10)]."""
    widths = [n_inputs, *hidden, n_classes]
    return [(widths[i] + 1, widths[i + 1]) for i in range(len(widths) - 1)]


def he_init(sizes: list[tuple[int, int]], rng: np.random.Generator) -> list[np.ndarray]:
    """He-normal weights (std √(2/fan_in)), zero bias row."""
    out = []
    for n_in, n_out in sizes:
        w = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / (n_in - 1))
        w[-1, :] = 0.0
        out.append(w)
    return out


def softmax_xent(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, δ = softmax(z) − onehot(y) per sample, and the predictions (labels y in [0, classes)).

    The same arithmetic as z' = z − max(z); p = exp(z') / Σ exp(z'); loss = −mean log max(p_y, 1e-30) in numpy
    (exp, the row sums and log stay numpy's), with the row max, argmax, division and one-hot step in two passes:
    numpy's row reductions over 10 columns cost more than the arithmetic."""
    z = np.ascontiguousarray(z, dtype=z.dtype if z.dtype in (np.float32, np.float64) else np.float64)
    y = np.ascontiguousarray(y)
    shifted = np.empty_like(z)
    pred = np.empty(len(z), dtype=np.intp)
    _shift_rows(z, shifted, pred)
    e = np.exp(shifted)
    py = np.empty(len(z), dtype=z.dtype)
    _normalise(e, e.sum(axis=1), y, py)  # e becomes δ; py the probabilities of the labels
    loss = float(-np.mean(np.log(np.maximum(py, 1e-30))))
    return loss, e, pred


@numba.njit(cache=True)
def _shift_rows(z: np.ndarray, out: np.ndarray, pred: np.ndarray) -> None:
    """out[b] = z[b] − max(z[b]); pred[b] = the first index of that maximum."""
    for b in range(z.shape[0]):
        best = 0
        top = z[b, 0]
        for j in range(1, z.shape[1]):
            if z[b, j] > top:
                top = z[b, j]
                best = j
        for j in range(z.shape[1]):
            out[b, j] = z[b, j] - top
        pred[b] = best


@numba.njit(cache=True)
def _normalise(e: np.ndarray, total: np.ndarray, y: np.ndarray, py: np.ndarray) -> None:
    """In place e[b] /= total[b] (softmax), py[b] = e[b, y[b]], then e[b, y[b]] −= 1 (δ)."""
    one = np.float32(1.0)  # e − 1 as numpy's `-= 1.0` gives it, for float32 and float64 e alike
    m = e.shape[1]
    for b in range(e.shape[0]):
        label = y[b]
        if label < 0 or label >= m:
            raise IndexError("softmax_xent: label out of range")
        for j in range(m):
            e[b, j] = e[b, j] / total[b]
        py[b] = e[b, label]
        e[b, label] = e[b, label] - one


@dataclass
class BatchResult:
    loss: float
    correct: int
    inputs: list[np.ndarray]  # x_l with bias, per layer (B, n_in), float32; finite (the reads check their volts)
    deltas: list[np.ndarray]  # δ_l per layer (B, n_out)


class CrossbarMLP:
    """An MLP whose weights live only on the array, driven through a :class:`Controller`."""

    def __init__(self, controller: Controller) -> None:
        self.ctl = controller
        self.n_layers = len(controller.layers)

    def predict(self, x: np.ndarray, chunk: int = 1000) -> np.ndarray:
        """Class predictions for x (B, 784), read on the array in chunks."""
        out = []
        for s in range(0, len(x), chunk):
            z = self._forward(x, np.arange(s, min(s + chunk, len(x))), 1.0)[1][-1]
            out.append(z.argmax(axis=1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _forward(self, x: np.ndarray, rows: np.ndarray, divisor: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Inputs with bias and pre-activations of every layer for the samples x[rows] / divisor."""
        xb, z = self.ctl.forward_inputs(0, x, rows, divisor=divisor)
        inputs, pre = [xb], [z]
        for l in range(1, self.n_layers):
            xb, z = self.ctl.forward_inputs(l, z, np.arange(len(z)), relu=True)  # ReLU of the layer below
            inputs.append(xb)
            pre.append(z)
        return inputs, pre

    def step(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None, divisor: float = 1.0) -> BatchResult:
        """Forward and backward pass of one batch on the array (no update): the samples x[rows] with labels
        y[rows], or all of x and y when ``rows`` is None (gathered in the first layer's input pass). With a
        ``divisor`` other than 1, x holds integer codes of the inputs x/divisor (``Dataset.codes_train``)."""
        if rows is None:
            rows = np.arange(len(x))
        else:
            y = y[rows]
        inputs, pre = self._forward(x, rows, divisor)
        loss, delta, pred = softmax_xent(pre[-1], y)
        deltas = [delta]
        for l in range(self.n_layers - 1, 0, -1):
            deltas.insert(0, self.ctl.backward_relu(l, deltas[0], pre[l - 1]))
        return BatchResult(loss, int(np.sum(pred == y)), inputs, deltas)
