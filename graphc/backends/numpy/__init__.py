"""The NumPy backend: the only code that calls NumPy kernels on a plan's arrays.

Modules: bind.py (the kernel contract), kernels.py, nn.py, fast.py and updates.py (the
kernels, each module a table `BIND`), workspace.py (scratch and constants), backend.py
(the one table `KERNELS` and the `Backend` that owns a plan's memory); passes over the
bound steps: flat.py (many params' updates as one), blas.py (a large weight's plain-SGD
update and its GEMM as one BLAS call), copies.py (two copies as one).
"""
from __future__ import annotations

from .backend import KERNELS, Backend, run_kernel

__all__ = ["KERNELS", "Backend", "run_kernel"]
