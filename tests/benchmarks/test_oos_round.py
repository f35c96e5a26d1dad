"""The out-of-sample rounds (`benchmarks/oos_round.py`): each round's pairs are new, span
16 GB to the whole card, and number at least 30 with the tuned ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.gpu_oos3 import ROUND3
from benchmarks.gpu_oos4 import ROUND4
from benchmarks.oos_round import Round, budget_bytes, pair_id

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("rnd", [ROUND3, ROUND4], ids=["round3", "round4"])
def test_no_pair_was_in_an_earlier_round(rnd: Round) -> None:
    earlier = set().union(*(set(pd.read_csv(RESULTS / f).pair_id) for f in rnd.earlier))
    ids = rnd.pair_ids()
    assert len(ids) == len(set(ids)) and not set(ids) & earlier
    shapes = {s for s, _, _ in rnd.preset_pairs} | {s for s, _, _ in rnd.tuned_cells}
    assert shapes == set(rnd.shapes)
    budgets = [budget_bytes(b) for _, _, b in rnd.preset_pairs]
    assert None in budgets and min(b for b in budgets if b) == 16 * 10**9
    assert len(ids) + sum(n for _, _, n in rnd.tuned_cells) >= 30


def test_round4_files_and_ids_follow_its_number() -> None:
    assert ROUND4.predictions == Path("benchmarks/results/gpu_oos4_predictions.csv")
    assert ROUND4.measured_name == "gpu_oos4_measured.csv"
    assert ROUND4.script == "benchmarks/gpu_oos4.py"
    shape = ROUND4.shapes[0]
    assert pair_id(shape, "16GB", "tuned1") == "flux.1-dev-768x1360x1s8-16GB-tuned1"
    assert ROUND4.host_limit_bytes == 90 * 10**9 and ROUND4.deadline_s <= 280
