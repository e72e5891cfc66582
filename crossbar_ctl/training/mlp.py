"""The multi-layer perceptron mapped onto tiles: ReLU hidden layers, softmax cross-entropy output.

Layer l computes pre-activations z_l = W_lᵀ [x_l; 1] on tile l (the bias is the last row); hidden layers use
ReLU. For the loss L = −Σ log softmax(z)_y the output delta is δ = softmax(z) − onehot(y), and hidden deltas
are δ_l = (W_{l+1} δ_{l+1})[:n] ⊙ 1[z_l > 0], computed on the array with ``read_vmm_t``.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def with_bias(x: np.ndarray) -> np.ndarray:
    """Append the constant bias input 1 to every row of x (B, n) -> (B, n+1), float32 (the precision of the
    array's DACs and of the float reference; the host's activations and deltas stay float32)."""
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x
    out[:, -1] = 1.0
    return out


def softmax_xent(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy, δ = softmax(z) − onehot(y) per sample, and the predictions."""
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    idx = np.arange(len(y))
    loss = float(-np.mean(np.log(np.maximum(p[idx, y], 1e-30))))
    delta = p
    delta[idx, y] -= 1.0
    return loss, delta, z.argmax(axis=1)


@dataclass
class BatchResult:
    loss: float
    correct: int
    inputs: list[np.ndarray]  # x_l with bias, per layer (B, n_in)
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
            a = x[s : s + chunk]
            for l in range(self.n_layers):
                z = self.ctl.forward(l, with_bias(a))
                a = np.maximum(z, 0.0) if l < self.n_layers - 1 else z
            out.append(a.argmax(axis=1))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def step(self, x: np.ndarray, y: np.ndarray) -> BatchResult:
        """Forward and backward pass of one batch on the array (no update)."""
        inputs, pre = [], []
        a = x
        for l in range(self.n_layers):
            xb = with_bias(a)
            inputs.append(xb)
            z = self.ctl.forward(l, xb)
            pre.append(z)
            a = np.maximum(z, 0.0) if l < self.n_layers - 1 else z
        loss, delta, pred = softmax_xent(a, y)
        deltas = [delta]
        for l in range(self.n_layers - 1, 0, -1):
            back = self.ctl.backward(l, deltas[0])[:, :-1]
            deltas.insert(0, back * (pre[l - 1] > 0))
        return BatchResult(loss, int(np.sum(pred == y)), inputs, deltas)
