"""The execution layer: one way to run a plan (`execute`), and the backends that run it."""

from resbench.execution.backends import (
    BACKENDS,
    Backend,
    CpuBackend,
    CudaBackend,
    SimBackend,
    cuda_unavailable,
    make_backend,
    memory_budget,
    resolve_device,
)
from resbench.execution.core import Execution, RunResult, execute

__all__ = ["BACKENDS", "Backend", "CpuBackend", "CudaBackend", "Execution", "RunResult",
           "SimBackend", "cuda_unavailable", "execute", "make_backend", "memory_budget", "resolve_device"]
