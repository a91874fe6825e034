"""graphc: a graph-definition compiler with static execution plans.

spec (YAML) -> ir (graph, shapes, schedule) -> autodiff (reverse graph)
-> plan (liveness, arena) -> executor (NumPy kernels) -> train / cli

The Python API (docs/api.md): `graphc.load(spec, params=None)` -> `graphc.Model`.
It is imported on first use, so `import graphc` (and the command line) stays light.
"""
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["load", "Model"]

if TYPE_CHECKING:
    from .api import Model, load


def __getattr__(name: str):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'graphc' has no attribute '{name}'")
