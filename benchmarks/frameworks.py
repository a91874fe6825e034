"""Optional contenders for bench_mlp.py: the same MLP step under jax.jit and PyTorch eager.

Each builder returns a no-argument step (forward, backward, plain SGD update, loss
read back to the host) on the given weights and batch, or None when the framework
does not import. Neither is a dependency of graphc; bench_mlp.py sets one thread for
both (XLA_FLAGS, torch.set_num_threads) before they load.
"""
from __future__ import annotations

ONE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def jax_step(weights, biases, lr: float, x, y):
    """A jax.jit step with the params donated, as a tuned JAX training loop runs it."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    last = len(weights) - 1

    def loss_of(params, x, y):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < last:
                h = jax.nn.relu(h)
        logp = jax.nn.log_softmax(h)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def sgd(params, x, y):
        loss, grads = jax.value_and_grad(loss_of)(params, x, y)
        return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), loss

    step = jax.jit(sgd, donate_argnums=0)
    state = [[(jnp.asarray(w), jnp.asarray(b)) for w, b in zip(weights, biases)]]
    xj, yj = jnp.asarray(x), jnp.asarray(y)

    def run() -> float:
        state[0], loss = step(state[0], xj, yj)
        return float(loss)
    return run


def torch_step(weights, biases, lr: float, x, y):
    """A PyTorch eager step: addmm, relu, cross_entropy, backward, an in-place SGD update."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(1)
    ws = [torch.tensor(w, requires_grad=True) for w in weights]
    bs = [torch.tensor(b, requires_grad=True) for b in biases]
    params, last = ws + bs, len(ws) - 1
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def run() -> float:
        h = xt
        for i, (w, b) in enumerate(zip(ws, bs)):
            h = torch.addmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        loss = F.cross_entropy(h, yt)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(p.grad, alpha=lr)
        return loss.item()
    return run


BUILDERS = {"jax.jit": jax_step, "torch": torch_step}
