"""Issue 14, fourth round: the diffusers engine's pipelines out of sample again, now with the
simulator's caching-allocator model (`resbench/devices/allocator.py`: fit / no-fit on reserved
bytes against the budget) on the calibrated H200 profile
(`benchmarks/results/gpu_oos4_profile.toml`: round 3's profile plus
`allocator_large_buffer_bytes`, PyTorch's 20 MiB, a spec value; no constant fitted to a
pipeline run).

New requests (FLUX.1-dev at 768x1360, 8 steps; Wan2.2 A14B at 480x832x25 and 576x1024x29,
2 steps), so no (plan, request, budget) pair was in rounds 2-3; presets and plans tuned in the
simulator on that profile, budgets from 16 GB to the whole card, several near the line where
fit / no-fit is at stake. The measuring machine is shared (another benchmark runs on the other
GPU of the same 256 GiB host): pairs needing more than 90 GB of host memory (pinned weights
plus pageable copies) are left out, and `measure` skips pairs that would pass 255 s.

    PYTHONPATH=. python benchmarks/gpu_oos4.py predict --profile benchmarks/results/gpu_oos4_profile.toml
    CUDA_VISIBLE_DEVICES=1 PYTHONPATH=. python benchmarks/gpu_oos4.py measure --out $OUT/oos4
    PYTHONPATH=. python benchmarks/gpu_oos4.py report --measured DIR/gpu_oos4_measured.csv
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.oos_round import FULL, Round, Shape, main  # noqa: E402

IMAGE = Shape("flux.1-dev", 768, 1360, 1, 8, False)  # 4,080 image tokens
LIGHT = Shape("wan2.2", 480, 832, 25, 2, True)  # 7 latent frames, 10,920 tokens
HEAVY = Shape("wan2.2", 576, 1024, 29, 2, True)  # 8 latent frames, 18,432 tokens
SHAPES = (IMAGE, LIGHT, HEAVY)

# (shape, preset, budget). Plans the simulator expects not to fit are here on purpose.
PRESET_PAIRS: tuple[tuple[Shape, str, str], ...] = (
    (IMAGE, "all-resident", FULL), (IMAGE, "all-resident", "38GB"),
    (IMAGE, "all-resident", "36GB"), (IMAGE, "kijai-block-swap", "24GB"),
    (IMAGE, "kijai-block-swap", "16GB"), (IMAGE, "sglang-wan2.2", "24GB"),
    (IMAGE, "sglang-wan2.2", "16GB"), (IMAGE, "diffusers-group-offload", "16GB"),
    (LIGHT, "all-resident", FULL), (LIGHT, "all-resident", "84GB"),
    (LIGHT, "all-resident", "72GB"), (LIGHT, "kijai-block-swap", "48GB"),
    (LIGHT, "kijai-block-swap", "40GB"), (LIGHT, "sglang-wan2.2", "24GB"),
    (LIGHT, "sglang-wan2.2", "16GB"), (LIGHT, "diffusers-group-offload", "24GB"),
    (LIGHT, "kijai-block-swap", "36GB"), (HEAVY, "sglang-wan2.2", "20GB"),
    (HEAVY, "all-resident", FULL), (HEAVY, "sglang-wan2.2", "32GB"),
    (HEAVY, "diffusers-group-offload", "20GB"), (HEAVY, "kijai-block-swap", "44GB"),
    (HEAVY, "kijai-block-swap", "32GB"),
)
TUNED_CELLS: tuple[tuple[Shape, str, int], ...] = (
    (IMAGE, "16GB", 2), (IMAGE, "24GB", 1), (LIGHT, "24GB", 2), (LIGHT, "40GB", 1),
    (HEAVY, "28GB", 1), (HEAVY, "44GB", 1),
)
ROUND4 = Round(4, SHAPES, PRESET_PAIRS, TUNED_CELLS,
               title="fourth out-of-sample round: the diffusers engine, caching allocator modelled",
               deadline_s=255.0, host_limit_bytes=90 * 10**9,
               earlier=("gpu_h200_oos_predictions.csv", "gpu_oos3_predictions.csv"))

if __name__ == "__main__":
    main(ROUND4, doc=__doc__)
