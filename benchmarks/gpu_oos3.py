"""Issue 14, third round: the diffusers engine's pipelines out of sample, on a profile that
`resbench calibrate` measured at the pipelines' own shapes (attention curve, kernel-mix
elementwise efficiency, decoder conv rate and workspaces; no constant fitted to a pipeline run).

New (plan, request, budget) pairs: none was in an earlier round (other steps, frames or
budgets). The modes and files are `benchmarks/oos_round.py`'s:

    PYTHONPATH=. python benchmarks/gpu_oos3.py predict --profile PROFILE.toml
    PYTHONPATH=. python benchmarks/gpu_oos3.py measure --out $OUT/oos3      # on the H200
    PYTHONPATH=. python benchmarks/gpu_oos3.py report --measured DIR/gpu_oos3_measured.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.oos_round import FULL, Round, Shape, budget_bytes, main, pair_id  # noqa: E402

# Last round ran 480x832x17 at 4 steps, 480x832x33 at 2 and FLUX 1024² at 8.
LIGHT = Shape("wan2.2", 480, 832, 17, 2, True)
HEAVY = Shape("wan2.2", 480, 832, 41, 2, True)
IMAGE = Shape("flux.1-dev", 1024, 1024, 1, 6, False)
SHAPES = (IMAGE, LIGHT, HEAVY)

# (shape, preset, budget). Plans the simulator expects not to fit are here on purpose.
PRESET_PAIRS: tuple[tuple[Shape, str, str], ...] = (
    (IMAGE, "all-resident", FULL), (IMAGE, "all-resident", "40GB"),
    (IMAGE, "sglang-wan2.2", "20GB"), (IMAGE, "kijai-block-swap", "20GB"),
    (IMAGE, "kijai-block-swap", "28GB"), (IMAGE, "diffusers-group-offload", "16GB"),
    (IMAGE, "sglang-wan2.2", "16GB"), (IMAGE, "kijai-block-swap", "16GB"),
    (IMAGE, "all-resident", "36GB"), (IMAGE, "all-resident", "28GB"),
    (LIGHT, "all-resident", FULL), (LIGHT, "all-resident", "80GB"),
    (LIGHT, "sglang-wan2.2", "32GB"), (LIGHT, "diffusers-group-offload", "20GB"),
    (LIGHT, "sglang-wan2.2", "16GB"), (LIGHT, "diffusers-group-offload", "16GB"),
    (LIGHT, "kijai-block-swap", "32GB"),
    (LIGHT, "kijai-block-swap", "20GB"), (LIGHT, "all-resident", "64GB"),
    (HEAVY, "all-resident", FULL), (HEAVY, "sglang-wan2.2", "40GB"),
    (HEAVY, "kijai-block-swap", "40GB"), (HEAVY, "kijai-block-swap", "28GB"),
)
TUNED_CELLS: tuple[tuple[Shape, str, int], ...] = (
    (IMAGE, "16GB", 2), (IMAGE, "20GB", 1), (LIGHT, "32GB", 2), (LIGHT, "20GB", 1),
    (HEAVY, "40GB", 1), (HEAVY, "28GB", 1),
)
ROUND3 = Round(3, SHAPES, PRESET_PAIRS, TUNED_CELLS,
               title="third out-of-sample round: the diffusers engine",
               earlier=("gpu_h200_oos_predictions.csv",))

__all__ = ["ROUND3", "budget_bytes", "pair_id"]

if __name__ == "__main__":
    main(ROUND3, doc=__doc__)
