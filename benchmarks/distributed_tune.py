"""Distributed tuning: N `resbench tune` workers on one study, then the study read back.

Starts `--workers` processes of `resbench tune`, all pointed at one `--storage` and one study
(each with `CUDA_VISIBLE_DEVICES=<its GPU>` under `--device cuda`; plain simulator workers
under `--device sim`), waits for them, and reads the study back with optuna: trial states,
trials per minute, duplicate and lost-trial checks, and the best latency reached.

    # one worker per GPU of this host, one PostgreSQL study
    python benchmarks/distributed_tune.py --workers 4 --device cuda --n-trials 50 \\
        --storage postgresql+psycopg2://resbench:PASSWORD@dbhost/resbench --budget 48GB
    # two simulator workers on a journal file; extra options go to every worker
    python benchmarks/distributed_tune.py --workers 2 --storage runs/dt/study.log \\
        --n-trials 150 --seed 0 --height 480 --width 832
    # the Markdown table of earlier runs
    python benchmarks/distributed_tune.py --table runs/distributed_tune/*/summary.json

Each worker writes its JSON result (`worker-I.json`), its log (`worker-I.log`) and its tuned
plan (`worker-I.tuned.toml`) into `--run-dir`; the launcher writes `summary.json` there.

Ctrl-C (or SIGTERM) stops the workers: each gets one SIGINT, so it marks its trial in flight
FAIL and exits 130 keeping its finished trials; a worker still running after `--grace`
seconds gets SIGTERM, then SIGKILL. The study is read back and reported either way. The
workers run in their own sessions, so a terminal's Ctrl-C reaches only the launcher, which
sends each worker exactly one SIGINT. Rerun the same command to resume the study.

With `--seed S`, worker I gets the seed S + I * 100000 (the tuner adds the number of trials
already in the study): with one seed, every worker's sampler would propose the same plans.

Checks, from the storage: trial numbers and trial ids are unique; the finished trials this
run's workers added equal the sum of their own counts (`trials_run` in their JSON), so none
were lost or counted twice; a trial's worker is its user attribute `worker` (`host:pid`,
`resbench.tune.liveness`), so other hosts' workers adding trials to the same study at the
same time do not count against this host's; and how many complete
trials repeat a parameter set already tried (not a storage fault: the sampler may propose a
plan twice, and two workers starting together may both queue the same preset).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import optuna

from resbench.tune.liveness import WORKER_ATTR
from resbench.tune.study import open_storage

SEED_STRIDE = 100_000
TrialState = optuna.trial.TrialState


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyCheck:
    """What the storage holds after a run; counts of trials."""

    study_name: str
    complete: int
    fail: int
    pruned: int
    running: int
    """Left RUNNING: a worker was killed mid-trial (SIGKILL), nothing marked it FAIL."""
    added: int
    """Finished trials (complete, fail, pruned) beyond those in the study before the run."""
    added_by_workers: int | None = None
    """Of those, the trials whose `worker` attribute is one of this run's workers (None:
    not known, as in summaries written before workers were recorded)."""
    duplicate_numbers: int
    """Trials sharing a trial number with another (0 unless the storage is broken)."""
    duplicate_ids: int
    repeated_params: int
    """Complete trials whose parameter set an earlier complete trial already had."""
    feasible: int
    best_latency_s: float | None
    search_s: float | None
    """First trial start to last trial end, over the trials this run added."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    workers: int
    storage: str
    """The URL without its password, or the journal file's path."""
    storage_kind: str
    device: str
    study: StudyCheck
    trials_per_worker: tuple[int | None, ...]
    """Each worker's own count (`trials_run` of its JSON); None: it wrote no result."""
    exit_codes: tuple[int, ...]
    interrupted: bool
    wall_s: float
    """First worker started to last worker ended (includes each worker's start-up)."""
    cpu_s: float
    """User + system CPU seconds of all workers."""
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    commands: tuple[str, ...]
    machine: dict[str, Any]
    label: str = ""
    """Shown instead of `storage_kind` in the table (e.g. a server setting under test)."""

    @property
    def lost(self) -> int | None:
        """Worker-reported trials the study lacks (negative: the study has more); None when
        a worker reported nothing."""
        if any(n is None for n in self.trials_per_worker):
            return None
        ours = self.study.added if self.study.added_by_workers is None else \
            self.study.added_by_workers
        return sum(n or 0 for n in self.trials_per_worker) - ours

    def to_dict(self) -> dict[str, Any]:
        return {"schema": 1, **asdict(self), "lost": self.lost}


def storage_kind(url: str) -> str:
    """`journal` for a .log path, `sqlite` for a .db path, else the URL's dialect."""
    if "://" not in url:
        return "journal" if url.endswith(".log") else "sqlite"
    return url.split("://", 1)[0].split("+", 1)[0]


def public_url(url: str) -> str:
    """The storage URL with its password hidden (for logs and results)."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url  # optuna's RDB storage brings SQLAlchemy

    return make_url(url).render_as_string(hide_password=True)


def worker_command(args: argparse.Namespace, index: int, extra: Sequence[str],
                   run_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "resbench", "tune", "--model", args.model, "--budget",
           args.budget, "--storage", args.storage, "--device", args.device,
           "--scale", f"{args.scale:g}", "--json", "--out", str(run_dir / f"worker-{index}.tuned.toml")]
    if args.n_trials is not None:
        cmd += ["--n-trials", str(args.n_trials)]
    if args.timeout is not None:
        cmd += ["--timeout", f"{args.timeout:g}"]
    if args.study_name:
        cmd += ["--study-name", args.study_name]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed + index * SEED_STRIDE)]
    return [*cmd, *extra]


def launch(commands: Sequence[list[str]], gpus: Sequence[str | None],
           run_dir: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i, (cmd, gpu) in enumerate(zip(commands, gpus, strict=True)):
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        with open(run_dir / f"worker-{i}.json", "wb") as out, \
                open(run_dir / f"worker-{i}.log", "wb") as log:
            # own session: the terminal's Ctrl-C goes to the launcher alone, which then
            # sends each worker exactly one SIGINT (a second one would cut its clean exit)
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=log, env=env, start_new_session=True))
    return procs


def wait(procs: Sequence[subprocess.Popen[bytes]], grace_s: float) -> bool:
    """Wait for every worker; on Ctrl-C stop them (`stop`) and return True."""
    try:
        for p in procs:
            p.wait()
        return False
    except KeyboardInterrupt:
        print("interrupted: stopping the workers (SIGINT: each keeps its finished trials)",
              file=sys.stderr, flush=True)
        stop(procs, grace_s)
        return True


def stop(procs: Sequence[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGINT, then SIGTERM after `grace_s`, then SIGKILL after 10 s more; another Ctrl-C
    moves on to the next signal at once."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [p for p in procs if p.poll() is None]
        if not alive:
            return
        for p in alive:
            p.send_signal(sig)
        deadline = time.monotonic() + wait_s
        try:
            for p in alive:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            continue


def study_names(url: str) -> dict[str, int]:
    """Every study in the storage and its number of trials."""
    summaries = optuna.get_all_study_summaries(open_storage(url), include_best_trial=False)
    return {s.study_name: s.n_trials for s in summaries}


def check_study(study: optuna.Study, trials_before: int = 0,
                workers: Collection[str] | None = None) -> StudyCheck:
    """Count, check and time the trials of `study`; `trials_before`: how many it had before
    this run (trial numbers below it are not this run's); `workers`: this run's workers
    (`host:pid`), to count the trials they added apart from other hosts'."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    numbers = Counter(t.number for t in trials)
    ids = Counter(t._trial_id for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    seen: set[tuple[tuple[str, Any], ...]] = set()
    repeated = 0
    for t in sorted(complete, key=lambda t: t.number):
        key = tuple(sorted(t.params.items()))
        repeated += key in seen
        seen.add(key)
    feasible = [t for t in complete
                if t.constraints and all(v <= 0 for v in t.constraints.values())]
    new = [t for t in trials if t.number >= trials_before and t.state.is_finished()]
    starts = [t.datetime_start for t in new if t.datetime_start]
    ends = [t.datetime_complete for t in new if t.datetime_complete]
    return StudyCheck(
        study_name=study.study_name, complete=states[TrialState.COMPLETE],
        fail=states[TrialState.FAIL], pruned=states[TrialState.PRUNED],
        running=states[TrialState.RUNNING], added=len(new),
        added_by_workers=None if workers is None else sum(
            t.user_attrs.get(WORKER_ATTR) in workers for t in new),
        duplicate_numbers=sum(n for n in numbers.values() if n > 1),
        duplicate_ids=sum(n for n in ids.values() if n > 1), repeated_params=repeated,
        feasible=len(feasible),
        best_latency_s=min((t.values[0] for t in feasible), default=None),
        search_s=(max(ends) - min(starts)).total_seconds() if starts and ends else None)


def worker_result(path: Path) -> dict[str, Any] | None:
    """A worker's JSON result; None if it wrote none (interrupted, or it failed)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pick_study(args: argparse.Namespace, results: Sequence[dict[str, Any] | None],
               names: dict[str, int]) -> str:
    for r in results:
        if r is not None:
            return str(r["study_name"])
    if args.study_name:
        return str(args.study_name)
    if len(names) == 1:
        return next(iter(names))
    raise SystemExit(f"no worker reported its study and the storage holds {len(names)}; "
                     f"pass --study-name (studies: {', '.join(sorted(names)) or 'none'})")


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in
                   Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    versions = {"python": platform.python_version()}
    for pkg in ("resbench", "optuna", "SQLAlchemy", "psycopg2-binary", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[pkg] = metadata.version(pkg)
    return {"cpu": cpu, "cores": os.cpu_count(), "host": platform.node(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "versions": versions}


def run(args: argparse.Namespace, extra: Sequence[str]) -> RunSummary:
    run_dir = args.run_dir or Path("runs/distributed_tune") / datetime.now(UTC).strftime(
        "%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    gpus: list[str | None] = [None] * args.workers
    if args.device == "cuda":
        ids = args.gpus.split(",") if args.gpus else [str(i) for i in range(args.workers)]
        if len(ids) != args.workers:
            raise SystemExit(f"--gpus names {len(ids)} GPUs for {args.workers} workers")
        gpus = list(ids)
    commands = [worker_command(args, i, extra, run_dir) for i in range(args.workers)]
    before = study_names(args.storage)
    # SIGTERM (a scheduler ending the job) stops the workers like Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    load_before = os.getloadavg()
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = launch(commands, gpus, run_dir)
    print(f"started {args.workers} worker(s) on {public_url(args.storage)}; logs in {run_dir}",
          file=sys.stderr, flush=True)
    interrupted = wait(procs, args.grace)
    wall_s = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    results = [worker_result(run_dir / f"worker-{i}.json") for i in range(args.workers)]
    name = pick_study(args, results, study_names(args.storage))
    study = optuna.load_study(study_name=name, storage=open_storage(args.storage))
    shown = [" ".join(c).replace(args.storage, public_url(args.storage)) for c in commands]
    summary = RunSummary(
        workers=args.workers, storage=public_url(args.storage),
        storage_kind=storage_kind(args.storage), device=args.device,
        study=check_study(study, before.get(name, 0),
                          workers={f"{socket.gethostname()}:{p.pid}" for p in procs}),
        trials_per_worker=tuple(None if r is None else int(r["trials_run"]) for r in results),
        exit_codes=tuple(int(p.returncode) for p in procs), interrupted=interrupted,
        wall_s=wall_s, cpu_s=(cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime),
        load_before=load_before, load_after=load_after,
        commands=tuple(f"CUDA_VISIBLE_DEVICES={g} {c}" if g is not None else c
                       for g, c in zip(gpus, shown, strict=True)),
        machine=machine(), label=args.label)
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


# -- reporting -----------------------------------------------------------------------------
HEADER = ("| workers | storage | device | trials added (complete/fail/pruned in study) "
          "| per worker | wall (s) | trials/min (wall) | trials/min (search) | CPU s/trial "
          "| cores busy | load before/after | best latency (s) | duplicates / lost "
          "| repeated param sets |\n"
          "| ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- "
          "| ---: |")


def table_row(s: dict[str, Any]) -> str:
    """One Markdown row of a `RunSummary.to_dict()`."""
    st = s["study"]
    added = st["added"]
    per_min = added / s["wall_s"] * 60 if s["wall_s"] else float("nan")
    search = f"{added / st['search_s'] * 60:.0f}" if st["search_s"] else "–"
    cpu = f"{s['cpu_s'] / added:.2f}" if added else "–"
    best = f"{st['best_latency_s']:.2f}" if st["best_latency_s"] is not None else "–"
    lost = "?" if s["lost"] is None else str(s["lost"])
    dup = st["duplicate_numbers"] + st["duplicate_ids"]
    per_worker = " + ".join("?" if n is None else str(n) for n in s["trials_per_worker"])
    return (f"| {s['workers']} | {s.get('label') or s['storage_kind']} | {s['device']} | {added} "
            f"({st['complete']}/{st['fail']}/{st['pruned']}) | {per_worker} | {s['wall_s']:.0f} "
            f"| {per_min:.0f} | {search} | {cpu} | {s['cpu_s'] / s['wall_s']:.2f} "
            f"| {s['load_before'][0]:.1f} / {s['load_after'][0]:.1f} | {best} | {dup} / {lost} "
            f"| {st['repeated_params']} |")


def print_summary(s: RunSummary) -> None:
    d = s.to_dict()
    st = s.study
    print(f"study {st.study_name} in {s.storage} ({s.storage_kind}); {s.workers} {s.device} "
          f"worker(s), exit codes {list(s.exit_codes)}"
          + (" (interrupted)" if s.interrupted else ""))
    print(f"trials: {st.complete} complete, {st.fail} fail, {st.pruned} pruned, {st.running} "
          f"left running; {st.added} added by this run in {s.wall_s:.1f} s "
          f"({st.added / s.wall_s * 60:.1f} trials/min)")
    print(f"checks: {st.duplicate_numbers} duplicate trial numbers, {st.duplicate_ids} duplicate "
          f"trial ids, lost {'unknown (a worker reported nothing)' if s.lost is None else s.lost}"
          f", {st.repeated_params} complete trials repeat a parameter set")
    print(f"best latency: {'none feasible' if st.best_latency_s is None else f'{st.best_latency_s:.3f} s'}"
          f" ({st.feasible} feasible trials)")
    print(HEADER)
    print(table_row(d))


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Unknown options are passed to every worker.")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--storage", help="optuna URL (postgresql+psycopg2://..., sqlite:///x.db) "
                                      "or a .log journal file, shared by every worker")
    ap.add_argument("--device", choices=("sim", "cuda"), default="sim")
    ap.add_argument("--gpus", help="cuda: comma-separated GPU ids, one per worker [0..N-1]")
    ap.add_argument("--n-trials", type=int, default=None, help="trials per worker")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per worker")
    ap.add_argument("--model", default="wan2.2")
    ap.add_argument("--budget", default="48GB")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=None, help="worker I gets SEED + I * 100000")
    ap.add_argument("--study-name", default=None)
    ap.add_argument("--run-dir", type=Path, default=None,
                    help="[runs/distributed_tune/<UTC time>]")
    ap.add_argument("--grace", type=float, default=60.0,
                    help="seconds a worker has to stop after SIGINT before SIGTERM")
    ap.add_argument("--label", default="", help="storage column of the table [storage kind]")
    ap.add_argument("--table", nargs="+", type=Path, metavar="SUMMARY",
                    help="print the Markdown table of these summary.json files (each one "
                         "summary or a list of them) and exit")
    args, extra = ap.parse_known_args(argv)
    if args.table:
        print(HEADER)
        for path in args.table:
            doc = json.loads(path.read_text())
            for summary in doc if isinstance(doc, list) else [doc]:
                print(table_row(summary))
        return 0
    if not args.storage:
        ap.error("--storage is required (every worker must share it)")
    if args.workers < 1:
        ap.error("--workers must be >= 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    summary = run(args, extra)
    print_summary(summary)
    if summary.interrupted:
        return 130
    failed = next((c for c in summary.exit_codes if c), 0)
    return failed if failed >= 0 else 128 - failed  # -N: the worker died of signal N


if __name__ == "__main__":
    sys.exit(main())
