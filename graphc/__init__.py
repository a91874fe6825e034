"""graphc: a graph-definition compiler with static execution plans.

spec (YAML) -> ir (graph, shapes, schedule) -> autodiff (reverse graph)
-> plan (liveness, arena) -> executor (NumPy kernels) -> train / cli
"""
__version__ = "0.1.0"
