"""`benchmarks/engines.py --rows`: a cell's rows replaced by the ones asked for, in that order,
and every kind of bad item refused with a message naming it and what is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.engines import main, select_rows
from benchmarks.engines_cells import PLANS, cells

GB = 10**9


def flux() -> object:
    return next(c for c in cells(tiny=False) if c.key == "flux-1024-s8")


def test_rows_replace_the_cells_order_repeats_and_variants_included() -> None:
    spec = "card:no-offload,16:group-block-stream,24:plan:flux-1024-s8-24GB.toml,host:tuned," \
           "16:preset:sglang-wan2.2,16:group-block-stream"
    cell = select_rows(flux(), spec, PLANS)
    assert cell.order == (("card", "no-offload"), (16 * GB, "group-block-stream"),
                          (24 * GB, "plan:flux-1024-s8-24GB.toml"), ("host", "tuned"),
                          (16 * GB, "preset:sglang-wan2.2"), (16 * GB, "group-block-stream"))
    assert cell.plans == flux().plans  # nothing else changes


@pytest.mark.parametrize(("spec", "message"), [
    ("16", "expected BUDGET:ROW"),
    ("32:tuned", "has budgets 16, 24 GB, card and host"),
    ("16:warp-offload", "unknown row 'warp-offload'"),
    ("16:plan:nope.toml", "no plan file nope.toml"),
    ("16:preset:nope", "row '16:preset:nope'"),
    ("card:tuned", "only card:no-offload"),
    ("host:group-leaf", "only the tuned host plan"),
    (" , ", "--rows is empty"),
])
def test_a_bad_row_is_refused_naming_it(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        select_rows(flux(), spec, PLANS)
    assert message in str(info.value)


def test_the_cli_refuses_a_bad_row_in_one_line_with_exit_2(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "out"), "--tiny", "--cells", "flux-1024-s8", "--rows", "32:tuned"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--rows: row '32:tuned': cell flux-1024-s8 has budgets 16, 24 GB" in err
    assert not (tmp_path / "out").exists()
