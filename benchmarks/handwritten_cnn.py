"""A CNN training step written by hand in NumPy with im2col: the baseline of bench_cnn.py.

The model is a list of layers (bench_cnn.MODELS): ("conv", out_channels, kernel, padding)
+ ReLU, ("pool", 2) a 2x2 max pool with stride 2, ("flatten",), ("dense", units) + ReLU
(none after the last), then softmax cross-entropy over integer labels (mean over the
batch) and plain SGD. What a NumPy user would write: column buffers and padded inputs
allocated once, the matmuls into them with `out=`, and plain NumPy expressions elsewhere.
The columns are [N, C·k·k, OH·OW], gathered through one `as_strided` view, so one
batched matmul per layer makes [N, O, OH·OW] in channels-first order.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


class Conv:
    def __init__(self, W, b, padding, in_shape):
        self.W, self.b, self.p = W, b, padding
        n, c, h, w = in_shape
        o, _, k, _ = W.shape
        self.k, self.oh, self.ow = k, h + 2 * padding - k + 1, w + 2 * padding - k + 1
        self.xp = np.zeros((n, c, h + 2 * padding, w + 2 * padding), W.dtype)
        self.cols = np.empty((n, c, k, k, self.oh, self.ow), W.dtype)
        self.y = np.empty((n, o, self.oh * self.ow), W.dtype)
        s = self.xp.strides
        self.view = as_strided(self.xp, self.cols.shape, s[:2] + s[2:] + s[2:])
        self.out_shape = (n, o, self.oh, self.ow)

    def forward(self, x):
        p = self.p
        self.xp[:, :, p:p + x.shape[2], p:p + x.shape[3]] = x
        np.copyto(self.cols, self.view)
        n = x.shape[0]
        np.matmul(self.W.reshape(len(self.W), -1), self.cols.reshape(n, -1, self.y.shape[2]),
                  out=self.y)
        self.y += self.b[:, None]
        np.maximum(self.y, 0, out=self.y)
        return self.y.reshape(self.out_shape)

    def backward(self, g, need_dx):
        n, o = g.shape[:2]
        g = g.reshape(n, o, -1) * (self.y > 0)
        cols = self.cols.reshape(n, -1, g.shape[2])
        self.dW = np.matmul(g, cols.transpose(0, 2, 1)).sum(axis=0).reshape(self.W.shape)
        self.db = g.sum(axis=(0, 2))
        if not need_dx:
            return None
        dcols = np.matmul(self.W.reshape(o, -1).T, g).reshape(self.cols.shape)
        dxp = np.zeros_like(self.xp)
        for i in range(self.k):
            for j in range(self.k):
                dxp[:, :, i:i + self.oh, j:j + self.ow] += dcols[:, :, i, j]
        p = self.p
        return dxp[:, :, p:dxp.shape[2] - p, p:dxp.shape[3] - p]

    def update(self, lr):
        self.W -= lr * self.dW
        self.b -= lr * self.db


class Pool:
    """2x2 max pooling, stride 2: the gradient goes to every maximum of a window (ties
    among ReLU zeros get a zero gradient from the ReLU before anyway)."""
    def forward(self, x):
        n, c, h, w = self.shape = x.shape
        self.x4 = x.reshape(n, c, h // 2, 2, w // 2, 2)
        self.y = self.x4.max(axis=(3, 5))
        return self.y

    def backward(self, g, need_dx):
        mask = self.x4 == self.y[:, :, :, None, :, None]
        return (mask * g[:, :, :, None, :, None]).reshape(self.shape)

    def update(self, lr):
        pass


class Flatten:
    def forward(self, x):
        self.shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, g, need_dx):
        return g.reshape(self.shape)

    def update(self, lr):
        pass


class Dense:
    def __init__(self, W, b, relu):
        self.W, self.b, self.relu = W, b, relu

    def forward(self, x):
        self.x = x
        self.y = x @ self.W + self.b
        if self.relu:
            np.maximum(self.y, 0, out=self.y)
        return self.y

    def backward(self, g, need_dx):
        if self.relu:
            g = g * (self.y > 0)
        self.dW, self.db = self.x.T @ g, g.sum(axis=0)
        return g @ self.W.T if need_dx else None

    def update(self, lr):
        self.W -= lr * self.dW
        self.b -= lr * self.db


class HandwrittenCNN:
    """`step(x, y)`: one forward, backward and SGD update of the layers; returns the loss."""

    def __init__(self, layers, params: list, in_shape: tuple, lr: float):
        self.lr, self.layers, shape, k = lr, [], in_shape, 0
        dense = sum(1 for spec in layers if spec[0] == "dense")
        for spec in layers:
            if spec[0] == "conv":
                layer = Conv(params[k], params[k + 1], spec[3], shape)
                shape, k = layer.out_shape, k + 2
            elif spec[0] == "pool":
                layer, shape = Pool(), shape[:2] + (shape[2] // 2, shape[3] // 2)
            elif spec[0] == "flatten":
                layer, shape = Flatten(), (shape[0], int(np.prod(shape[1:])))
            else:
                dense -= 1
                layer, k = Dense(params[k], params[k + 1], relu=dense > 0), k + 2
            self.layers.append(layer)

    def step(self, x, labels) -> float:
        h = x
        for layer in self.layers:
            h = layer.forward(h)
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        s = e.sum(axis=1, keepdims=True)
        rows = np.arange(len(labels))
        loss = float(np.mean(np.log(s[:, 0]) - z[rows, labels]))
        g = e / s
        g[rows, labels] -= 1
        g /= len(labels)
        for i, layer in enumerate(reversed(self.layers)):
            g = layer.backward(g, need_dx=i < len(self.layers) - 1)
        for layer in self.layers:
            layer.update(self.lr)
        return loss
