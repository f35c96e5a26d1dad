"""`benchmarks/zoo_vs_diffusers.py`: the shapes it runs and the table it writes (the forwards
themselves need the GPU; `--tiny` is the CPU dry run, minutes on this box)."""

from __future__ import annotations

from benchmarks.zoo_vs_diffusers import cases, markdown, tokens_of


def test_full_size_shapes_are_the_issues() -> None:
    shapes = {(c.zoo, s.label): tokens_of(s) for c in cases(tiny=False) for s in c.shapes}
    assert shapes[("wan2.2-t2v-a14b", "480x832x81")] == 32_760
    assert shapes[("wan2.2-t2v-a14b", "480x832x17")] == 7_800
    assert shapes[("flux.1-dev", "1024x1024")] == 64 * 64
    assert shapes[("wan2.2-ti2v-5b", "704x1280x121")] == 31 * 22 * 40


def test_every_case_has_a_tiny_twin() -> None:
    assert [c.zoo for c in cases(tiny=True)] == [c.zoo for c in cases(tiny=False)]


def test_table_gives_ratios_to_diffusers_and_the_goal() -> None:
    def row(impl: str, time_s: float, peak: int) -> dict:
        return {"model": "m", "shape": "s", "tokens": 10, "impl": impl, "time_s": time_s,
                "peak_activation_bytes": peak}

    rows = [row("diffusers", 2.0, 100), row("zoo", 2.08, 109), row("zoo-orig", 2.6, 380)]
    text = markdown(rows, {"card": "H"}, "cmd", 1.0)
    lines = {line.split("|")[4].strip(): line for line in text.splitlines()
             if line.startswith("| m ")}
    assert "| 1.040 |" in lines["zoo"] and "| 1.090 |" in lines["zoo"]
    assert lines["zoo"].rstrip().endswith("| met |")
    assert "| 1.300 |" in lines["zoo-orig"] and "| 3.800 |" in lines["zoo-orig"]
    slow = markdown([row("diffusers", 2.0, 100), row("zoo", 2.2, 100)], {}, "cmd", 1.0)
    assert "| missed |" in slow
