"""Measuring one row of `benchmarks/engines.py`: apply a mode, warm up, time, remove, and
the memory around it (peak device allocated / reserved, host RSS high-water mark, pinned host
bytes), with the time limit the campaign runs under. Rows are written as they come
(`Bench.write`: cells.csv, cells.json, profiles.tar.gz)."""

from __future__ import annotations

import contextlib
import csv
import gc
import io
import json
import signal
import statistics
import sys
import tarfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from resbench.errors import DoesNotFitError
from resbench.peers import WeightSnapshot, remove_hooks, to_pageable_cpu

T0 = time.perf_counter()
"""Process start (near enough): the time limit counts from here, imports included."""
SLOW_RUN_S = 10.0
"""A mode predicted slower than this per call runs once, without warm-up."""
LONG_CALL_S = 15.0
"""A call predicted longer than this is timed 3 times without a warm-up (peer modes), and a
plan row predicted so is not traced (a compute-bound cell: the time is in the compute)."""
SKIP_RUN_S = 60.0
"""A mode predicted slower than this per call is skipped."""
GB = 10**9


class TimeLimit(Exception):
    pass


def host_stats() -> dict[str, int]:
    if not torch.cuda.is_available():
        return {}
    return {k: int(v) for k, v in torch.cuda.host_memory_stats().items()}


def host_pinned_peak() -> int:
    stats = host_stats()
    for key in ("reserved_bytes.peak", "segment_bytes.peak", "allocated_bytes.peak"):
        if key in stats:
            return stats[key]
    return max([v for k, v in stats.items() if k.endswith("bytes.peak")] or [0])


def reset_host_peaks() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        with contextlib.suppress(Exception):
            torch.cuda.reset_peak_host_memory_stats()


def rss_hwm_bytes() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def free_everything() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        empty_host = getattr(torch._C, "_host_emptyCache", None) or getattr(
            torch._C, "_accelerator_emptyHostCache", None)
        if empty_host is not None:
            empty_host()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError | DoesNotFitError | MemoryError) or (
        "out of memory" in str(exc).lower())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def budget(device: torch.device, budget_bytes: int | None) -> Any:
    if device.type != "cuda":
        yield
        return
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (budget_bytes or total) / total), device)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)


@dataclass
class Bench:
    out: Path
    device: torch.device
    limit_s: float
    tiny: bool
    start: float = T0
    rows: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[str, bytes] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    host_limit_bytes: int = 1 << 40
    """Host memory the process may fill (`--host-limit-gb`)."""
    plans: Path = Path("benchmarks/results/engines_plans")
    """Folder of the tuned plans (`--plans`)."""
    broken: str | None = None
    """Why the cell's pipeline cannot run more rows (a removal that failed), if it cannot."""

    def left_s(self, deadline_s: float | None = None) -> float:
        end = self.limit_s if deadline_s is None else min(self.limit_s, deadline_s)
        return end - (time.perf_counter() - self.start)

    def add(self, row: dict[str, Any]) -> None:
        row = {"elapsed_s": round(time.perf_counter() - self.start, 1), **row}
        self.rows.append(row)
        lat = row.get("latency_s")
        print(f"-- {row['cell']} {row['budget_gb']} GB {row['row']}: {row['status']}"
              + (f" {lat:.3f} s" if isinstance(lat, float) else "")
              + (f" ({row.get('reason')})" if row.get("reason") else ""), flush=True)
        self.write()

    def write(self) -> None:
        doc = {"schema": 1, "environment": self.env, "rows": self.rows}
        tmp = self.out / "cells.json.partial"
        tmp.write_text(json.dumps(doc, indent=1, default=str))
        tmp.replace(self.out / "cells.json")
        keys: list[str] = []
        for r in self.rows:
            keys += [k for k in r if k not in keys and not isinstance(r[k], list | dict)]
        with (self.out / "cells.csv.partial").open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        (self.out / "cells.csv.partial").replace(self.out / "cells.csv")
        if self.profiles:
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w:gz") as tar:
                for name, data in self.profiles.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            (self.out / "profiles.tar.gz").write_bytes(buf.getvalue())

    def run_row(self, pipe: Any, cell: Any, budget_bytes: int | None, name: str, kind: str,
                mode: Any, predicted_call_s: float, predicted_setup_s: float,
                deadline_s: float | None = None, profile: bool = False,
                snapshot: bool = False, slow: bool | None = None, trace: bool = False,
                plan: bool = False,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Apply `mode`, warm up, time, remove; one row (also on no-fit or error).
        `snapshot`: keep the pipeline's own tensors while the mode runs and rebind them after
        (a peer mode; no copy back, at the cost of holding them during the row). `slow`: one
        unwarmed call, not a warm-up and 3 (default: predicted over `SLOW_RUN_S` a call).
        `trace`: one more call with the residency manager's tracer on (a plan row), its
        events kept in profiles.tar.gz and its stalls summed into the row. `plan`: a
        resbench plan row, whose first call pins the host copies (always a warm-up)."""
        base = {"cell": cell.key, "model": cell.model,
                "budget_gb": round(budget_bytes / GB, 1) if budget_bytes else "card",
                "budget_bytes": budget_bytes, "row": name, "kind": kind,
                "predicted_call_s": round(predicted_call_s, 2), **(extra or {})}
        if slow is None:
            slow = predicted_call_s > SLOW_RUN_S
        # a long call's first-call overhead (kernel selection) is a small share, and the
        # median of 3 leaves it out; a plan's first call pins its weights: it stays a warm-up
        long_call = predicted_call_s > LONG_CALL_S and not plan
        warm, runs = (0, 1) if slow else (0, 3) if long_call else (1, 3)
        trace = trace and predicted_call_s < LONG_CALL_S
        need = predicted_setup_s + (warm + runs) * predicted_call_s
        if self.broken:
            return {**base, "status": "skipped", "reason": self.broken}
        if predicted_call_s > SKIP_RUN_S:
            return {**base, "status": "skipped", "reason": f"predicted {predicted_call_s:.0f} s "
                    f"a call > {SKIP_RUN_S:.0f} s"}
        if need > self.left_s(deadline_s):
            return {**base, "status": "skipped", "reason": f"time: needs ~{need:.0f} s, "
                    f"{self.left_s(deadline_s):.0f} s left"}
        free_everything()
        reset_host_peaks()
        samples: list[float] = []
        row: dict[str, Any] = dict(base)
        applied = False
        # a row that runs far past its cell's deadline is cut, so the next cell keeps its time
        signal.alarm(max(1, int(min(self.left_s(), self.left_s(deadline_s) + 30))))
        snap = WeightSnapshot(pipe) if snapshot else None
        try:
            with budget(self.device, budget_bytes):
                t0 = time.perf_counter()
                mode.apply(pipe, self.device, budget_bytes)
                applied = True
                sync(self.device)
                row["setup_s"] = time.perf_counter() - t0
                for i in range(warm + runs):
                    t0 = time.perf_counter()
                    pipe(**cell.call, output_type="pt",
                         generator=torch.Generator().manual_seed(0), return_dict=False)
                    sync(self.device)
                    dt = time.perf_counter() - t0
                    if i < warm:
                        row["first_call_s"] = dt
                    else:
                        samples.append(dt)
                row.update(status="ok", fit=True, latency_s=statistics.median(samples),
                           samples_s=samples, runs=len(samples), warm=warm > 0)
                if trace and self.left_s(deadline_s) > 2 * predicted_call_s + 20:
                    try:
                        row.update(self.trace(pipe, cell, mode,
                                              f"{cell.key}_{row['budget_gb']}GB_{name}"))
                    except TimeLimit:
                        row["trace_error"] = "time limit reached while tracing"
                    except Exception as exc:  # noqa: BLE001 - the timing stands without it
                        row["trace_error"] = one_line(exc)
                if profile and self.left_s(deadline_s) > 3 * predicted_call_s + 30:
                    try:
                        self.profile(pipe, cell, f"{cell.key}_{row['budget_gb']}GB_{name}.json")
                    except TimeLimit:
                        row["profile_error"] = "time limit reached while profiling"
                    except Exception as exc:  # noqa: BLE001 - the timing stands without it
                        row["profile_error"] = one_line(exc)
        except TimeLimit:
            row.update(status="cut", fit=None, reason="time limit reached during the row")
        except Exception as exc:  # noqa: BLE001 - every failure is a row
            if is_oom(exc):
                row.update(status="no-fit", fit=False, reason=one_line(exc))
            else:
                row.update(status="error", fit=None, reason=one_line(exc))
                traceback.print_exc()
        finally:
            signal.alarm(0)
            row.update(self.memory_fields(mode))
            if applied or row.get("status") != "ok":
                try:
                    if snap is not None:
                        mode.remove(pipe, snap)
                    else:
                        mode.remove(pipe)
                except Exception as exc:  # noqa: BLE001
                    row["remove_error"] = one_line(exc)
                    try:
                        remove_hooks(pipe)
                        to_pageable_cpu(pipe)
                    except Exception as again:  # noqa: BLE001 - the rows so far stand
                        self.broken = f"the pipeline was lost removing {name}: {one_line(again)}"
                        row["remove_error"] += f"; {self.broken}"
            snap = None
            free_everything()
        return row

    def memory_fields(self, mode: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"rss_peak_bytes": rss_hwm_bytes()}
        registered = mode.pinned_bytes() if hasattr(mode, "pinned_bytes") else 0
        out["pinned_bytes"] = host_pinned_peak() + registered
        out["pinned_registered_bytes"] = registered
        if hasattr(mode, "host_bytes"):
            with contextlib.suppress(Exception):
                out["plan_host_bytes"] = mode.host_bytes()
        if self.device.type == "cuda":
            out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
            out["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(self.device)
        return out

    def trace(self, pipe: Any, cell: Any, mode: Any, name: str) -> dict[str, Any]:
        """One more call of a plan row with the manager's tracer on: its events (resbench's
        trace columns, CSV) go into profiles.tar.gz as traces/NAME.csv.gz; the row gets the
        traced latency, compute and stall seconds, and the stalls by stage and component
        (where the time above compute went)."""
        import gzip

        from resbench.trace import Tracer

        manager = mode.handle.session.manager
        manager.tracer = Tracer(enabled=True)
        try:
            t0 = time.perf_counter()
            pipe(**cell.call, output_type="pt", generator=torch.Generator().manual_seed(0),
                 return_dict=False)
            sync(self.device)
            wall = time.perf_counter() - t0
            # a pipeline call under apply_plan leaves device time tokens (CUDA events) in
            # the trace; TorchDriver.run resolves them, a request() context does not
            manager.tracer.finalize(manager.device.resolve)
            frame = manager.tracer.frame()
        finally:
            manager.tracer = Tracer(enabled=False)
        self.profiles[f"traces/{name}.csv.gz"] = gzip.compress(
            frame.to_csv(index=False).encode(), 6)
        return {"trace_wall_s": wall, **stall_summary(frame)}

    def profile(self, pipe: Any, cell: Any, name: str) -> None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA]
                                         if self.device.type == "cuda" else [])
        from resbench.peers.profile import annotate_components

        annotations = annotate_components(pipe)
        try:
            with profile(activities=acts, profile_memory=True) as prof:
                pipe(**cell.call, output_type="pt", generator=torch.Generator().manual_seed(0),
                     return_dict=False)
                sync(self.device)
            path = self.out / "profile.tmp.json"
            prof.export_chrome_trace(str(path))
            import gzip

            self.profiles[name + ".gz"] = gzip.compress(path.read_bytes(), 6)
            path.unlink()
        finally:
            annotations.remove()


def stall_summary(frame: Any) -> dict[str, Any]:
    """From a resbench trace of one request: its latency, compute and stall seconds, the
    stalls by `stage/component` (largest first) and the bytes copied in by stage."""
    start = frame.loc[frame["kind"] == "request_start", "t_s"].min()
    end = frame.loc[frame["kind"] == "request_end", "t_s"].max()
    compute = frame[frame["kind"] == "compute"]
    waits = frame[frame["kind"] == "wait"]
    loads = frame[frame["kind"] == "load"]
    by = waits.groupby(["stage", "component"])["stall_s"].sum().sort_values(ascending=False)
    return {
        "trace_latency_s": float(end - start),
        "trace_compute_s": float((compute["end_s"] - compute["t_s"]).sum()),
        "trace_stall_s": float(waits["stall_s"].sum()),
        "trace_stall_by_s": {f"{st}/{c}": round(float(v), 4) for (st, c), v in by.items()
                             if v > 0},
        "trace_h2d_by_stage_bytes": {str(k): int(v) for k, v in
                                     loads.groupby("stage")["bytes"].sum().items()},
    }


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def host_ram_bytes() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 1 << 40


def environment(device: torch.device) -> dict[str, Any]:
    from importlib import metadata

    env: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "argv": sys.argv,
                           "device": str(device), "host_ram_bytes": host_ram_bytes()}
    for pkg in ("torch", "diffusers", "accelerate", "transformers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            env[pkg] = metadata.version(pkg)
    if device.type == "cuda":
        env["card"] = torch.cuda.get_device_name(device)
        env["card_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    return env
