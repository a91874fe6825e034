"""A hand-tuned, preallocated NumPy training step: the yardstick for graphc's compiled step.

    HandwrittenMLP(weights, biases, batch, lr).step(x, y) -> loss

The model is h_0 = x, h_i = relu(h_{i-1} @ W_i + b_i), scores = h_{L-1} @ W_L + b_L,
loss = mean_n(logsumexp(scores_n) - scores_n[y_n]), and one plain SGD update
W -= lr * dloss/dW. Every buffer is allocated once in `__init__`; a step calls
NumPy only with `out=`. The forms were chosen by timing alternatives on one
core (benchmarks/README.md lists them):

- relu is `np.maximum(a, zeros, out=a)`: a scalar 0 takes a slow path (~3x);
- bias and row sums go through BLAS with a ones vector (`np.dot(ones, g, out=)`),
  2-4x cheaper than `sum(axis, out=)` on these shapes;
- lr / batch is folded into the seed gradient d loss/d scores, so every
  gradient below it is already scaled and each update is one subtract;
- the softmax runs in place in the scores buffer.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class HandwrittenMLP:
    """Forward, backward and SGD update of a ReLU MLP with softmax cross-entropy, no allocation."""

    def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                 batch: int, lr: float, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.W = [np.array(w, dtype=self.dtype) for w in weights]
        self.b = [np.array(b, dtype=self.dtype) for b in biases]
        self.batch, self.lr = batch, float(lr)
        sizes = [w.shape[1] for w in self.W]
        self.h = [self._zeros(batch, d) for d in sizes]          # h[-1] holds the scores
        self.g = [self._zeros(batch, d) for d in sizes[:-1]]     # d loss/d h, hidden layers
        self.mask = [np.zeros((batch, d), dtype=bool) for d in sizes[:-1]]
        self.zeros = [self._zeros(batch, d) for d in sizes[:-1]]
        self.dW = [np.zeros_like(w) for w in self.W]
        self.db = [np.zeros_like(b) for b in self.b]
        self._softmax_buffers(batch, sizes[-1])

    def _zeros(self, *shape) -> np.ndarray:
        return np.zeros(shape, dtype=self.dtype)

    def _softmax_buffers(self, batch: int, classes: int) -> None:
        self.ones_batch = np.ones(batch, dtype=self.dtype)
        self.ones_classes = np.ones(classes, dtype=self.dtype)
        self.row_max = self._zeros(batch)
        self.row_shift = self.row_max.reshape(batch, 1)
        self.row_sum = self._zeros(batch)
        self.row_scale = self.row_sum.reshape(batch, 1)
        self.log_sum = self._zeros(batch)
        self.picked = self._zeros(batch)
        self.row_base = np.arange(batch, dtype=np.intp) * classes
        self.index = np.zeros(batch, dtype=np.intp)
        self.scores_flat = self.h[-1].reshape(-1)                 # a view, not a copy
        self.columns = [self.h[-1][:, j] for j in range(classes)]
        self.zero = self.dtype.type(0)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """scores = h_{L-1} @ W_L + b_L with h_i = relu(h_{i-1} @ W_i + b_i), into self.h."""
        prev = x
        last = len(self.W) - 1
        for i, (w, b, h) in enumerate(zip(self.W, self.b, self.h)):
            np.matmul(prev, w, out=h)
            np.add(h, b, out=h)
            if i < last:
                np.maximum(h, self.zeros[i], out=h)
            prev = h
        return self.h[-1]

    def seed(self, y: np.ndarray, scale: float) -> float:
        """Loss of the scores in self.h[-1]; overwrite them with scale * d loss/d scores.

        d loss/d scores = (softmax(scores) - onehot(y)) / batch.
        """
        s, flat = self.h[-1], self.scores_flat
        self.max_of_columns()
        np.subtract(s, self.row_shift, out=s)
        np.add(self.row_base, y, out=self.index)
        flat.take(self.index, None, self.picked, "clip")          # shifted logit of the label
        np.exp(s, out=s)
        np.dot(s, self.ones_classes, out=self.row_sum)
        np.log(self.row_sum, out=self.log_sum)
        np.subtract(self.log_sum, self.picked, out=self.log_sum)
        loss = float(np.dot(self.log_sum, self.ones_batch)) / self.batch
        c = self.dtype.type(scale / self.batch)
        np.divide(c, self.row_sum, out=self.row_sum)
        np.multiply(s, self.row_scale, out=s)
        flat.take(self.index, None, self.picked, "clip")
        np.subtract(self.picked, c, out=self.picked)
        flat.put(self.index, self.picked, "clip")
        return loss

    def max_of_columns(self) -> None:
        """row_max = max over classes, one np.maximum per column: the axis is short."""
        cols = self.columns
        if len(cols) == 1:
            np.copyto(self.row_max, cols[0])
            return
        np.maximum(cols[0], cols[1], out=self.row_max)
        for col in cols[2:]:
            np.maximum(self.row_max, col, out=self.row_max)

    def backward(self, x: np.ndarray, update: bool) -> None:
        """dW, db from the seeded gradient in self.h[-1]; with `update`, W -= dW and b -= db."""
        for i in range(len(self.W) - 1, -1, -1):
            g = self.h[i] if i == len(self.W) - 1 else self.g[i]
            prev = x if i == 0 else self.h[i - 1]
            np.matmul(prev.T, g, out=self.dW[i])
            np.dot(self.ones_batch, g, out=self.db[i])
            if i > 0:
                below = self.g[i - 1]
                np.matmul(g, self.W[i].T, out=below)             # before W[i] changes
                np.greater(prev, self.zero, out=self.mask[i - 1])
                np.multiply(below, self.mask[i - 1], out=below)
            if update:
                np.subtract(self.W[i], self.dW[i], out=self.W[i])
                np.subtract(self.b[i], self.db[i], out=self.b[i])

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One SGD step on the batch (x, y); returns the loss before the update."""
        self.forward(x)
        loss = self.seed(y, self.lr)
        self.backward(x, update=True)
        return loss

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple:
        """(loss, [dloss/dW_i], [dloss/db_i]) as copies; parameters left unchanged."""
        self.forward(x)
        loss = self.seed(y, 1.0)
        self.backward(x, update=False)
        return loss, [d.copy() for d in self.dW], [d.copy() for d in self.db]

    def matmul_floor(self, x: np.ndarray) -> None:
        """Only the step's matmuls (forward, dW, d h), on the same buffers: the time floor."""
        prev = x
        for w, h in zip(self.W, self.h):
            np.matmul(prev, w, out=h)
            prev = h
        for i in range(len(self.W) - 1, -1, -1):
            g = self.h[i] if i == len(self.W) - 1 else self.g[i]
            np.matmul(x.T if i == 0 else self.h[i - 1].T, g, out=self.dW[i])
            if i > 0:
                np.matmul(g, self.W[i].T, out=self.g[i - 1])
