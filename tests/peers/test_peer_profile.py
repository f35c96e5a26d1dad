"""The torch.profiler → resbench trace converter, on a hand-made GPU profile (copies both
ways, kernels, a host sync, memory samples) whose numbers are worked out by hand below."""

from __future__ import annotations

from pathlib import Path

import pytest

from resbench.peers.profile import (
    profile_events,
    profile_result,
    read_chrome_trace,
    save_profile_run,
)

FIXTURE = Path(__file__).parent.parent / "data" / "peer_profile_gpu.json"
KINDS = {"text_encoder": "text_encoder", "transformer": "dit"}


@pytest.fixture(scope="module")
def frame():
    return profile_events(read_chrome_trace(FIXTURE), kinds=KINDS)


def test_copies_carry_bytes_direction_and_the_component_that_issued_them(frame):
    loads = frame[frame["kind"] == "load"]
    assert list(loads["component"]) == ["text_encoder", "transformer"]
    assert list(loads["bytes"]) == [5_000_000, 16_000_000]
    # times are seconds from the first event (ts 1000 us)
    assert loads["t_s"].tolist() == pytest.approx([120e-6, 2020e-6])
    assert loads["end_s"].tolist() == pytest.approx([620e-6, 2320e-6])
    d2h = frame[frame["kind"] == "d2h"]
    assert list(d2h["bytes"]) == [4_000_000] and list(d2h["component"]) == ["transformer"]
    # device-to-device copies cross no link: not a transfer
    assert 999 not in set(frame["bytes"])


def test_kernels_are_compute_of_their_launching_component_and_stages_follow_kinds(frame):
    compute = frame[frame["kind"] == "compute"]
    assert list(compute["component"]) == ["text_encoder", "transformer", ""]
    assert list(compute["stage"])[:2] == ["text_encode", "denoise"]
    waits = frame[frame["kind"] == "wait"]
    assert waits["stall_s"].tolist() == pytest.approx([700e-6])
    memory = frame[frame["kind"] == "memory"]
    assert list(memory["device_bytes"]) == [21_000_000]  # the CPU sample is not the device's


def test_result_sums_the_events(frame):
    res = profile_result(frame, budget_bytes=10**9, pinned_host_bytes=7)
    assert res["latency_s"] == pytest.approx(4600e-6)  # last event ends at ts 5600
    assert res["compute_s"] == pytest.approx((200 + 800 + 100) * 1e-6)
    assert res["h2d_bytes"] == 21_000_000 and res["d2h_bytes"] == 4_000_000
    assert res["peak_device_bytes"] == 21_000_000 and res["pinned_host_bytes"] == 7
    assert res["stall_s"] == pytest.approx(700e-6)


def test_saved_runs_compare(tmp_path):
    from resbench.analysis.compare import compare_runs
    from resbench.run import load_run

    events = read_chrome_trace(FIXTURE)
    a = save_profile_run(tmp_path / "a", events, name="model-offload", model="flux.1-dev",
                         request={"height": 1024}, description="pipe.enable_model_cpu_offload()",
                         kinds=KINDS, budget_bytes=16 * 10**9)
    b = save_profile_run(tmp_path / "b", events[:-1], name="other", model="flux.1-dev",
                         request={"height": 1024}, description="x", kinds=KINDS)
    run_a, run_b = load_run(a), load_run(b)
    assert run_a.plan.name == "peer:model-offload"
    assert "enable_model_cpu_offload" in run_a.plan.description
    table = compare_runs(run_a, run_b).set_index("metric")
    assert table.loc["h2d_bytes", "a"] == table.loc["h2d_bytes", "b"] == 21_000_000
    # B lacks the orphan kernel that ended A's request 1 ms later
    assert table.loc["latency_s", "b"] < table.loc["latency_s", "a"]


def test_a_cpu_profile_converts_with_each_annotated_component_as_compute():
    from types import SimpleNamespace

    import torch
    from torch.profiler import ProfilerActivity, profile

    from resbench.peers.profile import annotate_components

    class Vae(torch.nn.Module):
        def decode(self, x):
            return x * 2

    pipe = SimpleNamespace(components={"text_encoder": torch.nn.Linear(8, 8),
                                       "transformer": torch.nn.Linear(8, 8), "vae": Vae(),
                                       "scheduler": object()})
    annotations = annotate_components(pipe)
    x = torch.ones(2, 8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        h = pipe.components["text_encoder"](x)
        for _ in range(3):
            h = pipe.components["transformer"](h)
        pipe.components["vae"].decode(h)
    annotations.remove()
    assert "decode" not in pipe.components["vae"].__dict__  # the wrapper is gone
    frame = profile_events(_chrome(prof),
                           kinds={"text_encoder": "text_encoder", "transformer": "dit",
                                  "vae": "vae"})
    compute = frame[frame["kind"] == "compute"]
    assert list(compute["component"]) == ["text_encoder", "transformer", "transformer",
                                          "transformer", "vae"]
    assert list(compute["stage"]) == ["text_encode", "denoise", "denoise", "denoise", "decode"]
    assert (compute["end_s"] > compute["t_s"]).all()


def _chrome(prof):
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/trace.json"
        prof.export_chrome_trace(path)
        return json.load(open(path))["traceEvents"]
