"""Build the example report of a real GPU run from a trace the GPU campaign saved.

    PYTHONPATH=. python benchmarks/real_run_report.py

Reads `benchmarks/results/gpu_trace_tuned-48GB_48GB.csv` (campaign 2 on an H100: Wan2.2 A14B,
480x832x81, 4 steps, CFG on, `tuned-48GB` plan, 48 GB emulated budget) and the measured row
of `gpu_fidelity_real.json`, saves them as a resbench run folder under `runs/` and writes
`reports/examples/wan2.2-h100-real-48GB-tuned.html`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from resbench.hardware import load_profile
from resbench.models import get_model
from resbench.pipeline import Request
from resbench.record import record_schedule
from resbench.report.build import write_report
from resbench.residency import load_plan
from resbench.run import load_run, save_run

RESULTS = Path("benchmarks/results")
PLAN = Path("strategies/wan2.2-t2v-a14b/h100-80g-calibrated-48GB.tuned.toml")


def main() -> None:
    rows = json.loads((RESULTS / "gpu_fidelity_real.json").read_text())["rows"]
    row = next(r for r in rows if r.get("plan") == "tuned-48GB" and r.get("status") == "ok")
    spec = get_model("wan2.2")
    request = Request(**row["request_dict"])
    frame = pd.read_csv(RESULTS / "gpu_trace_tuned-48GB_48GB.csv", keep_default_na=False,
                        na_values={"end_s": [""]})
    result = {k: row[k] for k in ("latency_s", "compute_s", "stall_s", "h2d_bytes", "d2h_bytes",
                                  "peak_device_bytes", "pinned_host_bytes")}
    result["budget_bytes"] = row["budget_bytes"]
    out = Path("runs/wan2.2-h100-real-48GB-tuned")
    save_run(out, events=frame, plan=load_plan(PLAN), model=spec.name, request=request,
             profile=load_profile(RESULTS / "gpu_h100-80gb-hbm3-calibrated.toml"),
             result=result, device="cuda", capacity_bytes=row["budget_bytes"],
             schedule=record_schedule(spec, request),
             extra={"card": row["device_name"], "peak_reserved_bytes": row["peak_reserved_bytes"],
                    "source": "GPU campaign 2 (benchmarks/gpu_fidelity.py), see gpu_tuned.md"})
    path = write_report("reports/examples/wan2.2-h100-real-48GB-tuned.html", runs=[load_run(out)])
    print(path)


if __name__ == "__main__":
    main()
