"""The out-of-sample rounds (`benchmarks/oos_round.py`): each round's pairs are new, span
16 GB to the whole card, and number at least 30 with the tuned ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.gpu_oos3 import ROUND3
from benchmarks.oos_round import Round, budget_bytes

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


@pytest.mark.parametrize("rnd", [ROUND3], ids=["round3"])
def test_no_pair_was_in_an_earlier_round(rnd: Round) -> None:
    earlier = set().union(*(set(pd.read_csv(RESULTS / f).pair_id) for f in rnd.earlier))
    ids = rnd.pair_ids()
    assert len(ids) == len(set(ids)) and not set(ids) & earlier
    shapes = {s for s, _, _ in rnd.preset_pairs} | {s for s, _, _ in rnd.tuned_cells}
    assert shapes == set(rnd.shapes)
    budgets = [budget_bytes(b) for _, _, b in rnd.preset_pairs]
    assert None in budgets and min(b for b in budgets if b) == 16 * 10**9
    assert len(ids) + sum(n for _, _, n in rnd.tuned_cells) >= 30
