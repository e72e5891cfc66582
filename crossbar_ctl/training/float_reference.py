"""A plain numpy float32 MLP (ReLU, softmax cross-entropy, SGD): the software reference for speed and accuracy."""
from __future__ import annotations

import time

import numpy as np


class FloatMLP:
    """784-100-10 (or any widths) in float32 with He init; ``train_epoch`` does mini-batch SGD."""

    def __init__(self, widths: list[int], rng: np.random.Generator) -> None:
        self.w = [(rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32)
                  for a, b in zip(widths[:-1], widths[1:])]
        self.b = [np.zeros(b, dtype=np.float32) for b in widths[1:]]

    def logits(self, x: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        acts = [x]
        a = x
        for i, (w, b) in enumerate(zip(self.w, self.b)):
            z = a @ w + b
            a = np.maximum(z, 0) if i < len(self.w) - 1 else z
            acts.append(a)
        return acts, a

    def train_batch(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        acts, z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        idx = np.arange(len(y))
        loss = float(-np.mean(np.log(np.maximum(p[idx, y], 1e-30))))
        d = p
        d[idx, y] -= 1.0
        d /= len(y)
        for i in range(len(self.w) - 1, -1, -1):
            gw = acts[i].T @ d
            gb = d.sum(axis=0)
            if i > 0:
                d = (d @ self.w[i].T) * (acts[i] > 0)
            self.w[i] -= lr * gw
            self.b[i] -= lr * gb
        return loss

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(self.logits(x)[1].argmax(axis=1) == y))


def float_samples_per_s(x: np.ndarray, y: np.ndarray, batch: int, lr: float, seed: int = 0,
                        min_seconds: float = 1.0) -> float:
    """Training throughput of the float reference at ``batch`` (after one warm-up batch)."""
    rng = np.random.default_rng(seed)
    net = FloatMLP([x.shape[1], 100, 10], rng)
    x = x.astype(np.float32)
    net.train_batch(x[:batch], y[:batch], lr)
    seen, start = 0, time.perf_counter()
    while True:
        for s in range(0, len(x) - batch + 1, batch):
            net.train_batch(x[s : s + batch], y[s : s + batch], lr)
            seen += batch
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return seen / elapsed
