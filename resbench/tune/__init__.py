"""Optuna search over residency plans for a model, hardware profile and memory budget.

`space` (sweeps/*.toml → search space), `objective` (plan → score and constraints), `study`
(names, storage, samplers), `runner` (`tune`, the entry point), `result` (`TuneResult`),
`real` (the hook for measuring on the GPU).
"""

from __future__ import annotations

from resbench.tune.result import TuneResult
from resbench.tune.runner import NoFeasiblePlanError, TuneInterrupted, TuneOptions, tune

__all__ = ["NoFeasiblePlanError", "TuneInterrupted", "TuneOptions", "TuneResult", "tune"]
