"""Distributed tuning on GPUs: one `resbench tune --device cuda` worker per GPU, one study.

    python benchmarks/distributed_tune_gpu.py OUTDIR --campaign a   # 2 GPUs, 7-7.5 min
    python benchmarks/distributed_tune_gpu.py OUTDIR --campaign b   # 2 GPUs, 7-7.5 min
    python benchmarks/distributed_tune_gpu.py OUTDIR --tiny --campaign a   # CPU, sim workers

A run is a list of **phases**, one after the other; a phase is one or more **groups** run at
the same time, each group a new study on one storage with one worker per GPU it names
(`CUDA_VISIBLE_DEVICES=i`; never two workers on one GPU within a phase, checked before the
launch and by nvidia-smi UUIDs while they run). `--phase` spells one phase:
`postgresql@0+journal@1` is a PostgreSQL study with a worker on GPU 0 and, at the same time,
a journal study with a worker on GPU 1; `postgresql@0,1` is one PostgreSQL study with two
workers, one per GPU. `--campaign` names a list of phases (`CAMPAIGNS`):

* `a`: `postgresql@0,1` (2 workers, with the kill test), then `postgresql@0+journal@1`
  (each storage's 1-worker figure, both for one start-up);
* `b`: `journal@0,1` (2 workers, with the kill test), then `postgresql@1+journal@0` (the
  1-worker figures again, GPUs swapped).

The kill tests come first: the 1-worker figures, measured twice, are what a deadline may cut.

Each worker searches for `--window-s` seconds after its first trial (a 1-worker group ends
by the worker's own `--timeout`). In a group of two or more, once every worker has searched
its window, the last worker is killed with SIGKILL in the middle of a trial; the trial it
left RUNNING must end FAIL, and the kill test records after how many seconds and by what:
a survivor's sweep (`resbench.tune.liveness`: the pid is gone from this host; `StaleWatch`
sweeps every 20 s while a trial runs) or optuna's heartbeat (RDB storages: 120 s grace, what
ends it for a worker on another host). Then the survivors are stopped as Ctrl-C would (one
SIGINT each: the trial in flight FAIL, exit 130); `--kill-wait-s` bounds the wait.

Each group's study is read back and checked against the workers' own logs (one line per
finished trial, `resbench.tune.trial_log`): duplicates, lost trials, trials nobody logged,
trials left RUNNING (`dt_checks.py`); trials per minute, counted per worker from its own first
trial and summed; the best feasible latency within `--window-s` of the study's first trial;
each worker's start-up (launch to first trial) and its steps (`dt_workers.STARTUP_MARKS`);
peak RSS per worker and the host's used memory (all workers of the phase running); the GPU of
each worker's process (nvidia-smi).

The default search is FLUX.1-dev (diffusers engine) at 512x512, 2 steps, a 24 GB budget: trials
of seconds, so that a 75 s window holds enough of them (the simulator, which matched the
measured frugal plan at 1024x1024 x 4 steps within 1 %, gives ~12 s a run for the frugal plan
and 0.8-3 s for most feasible ones, 14 of 40 plans feasible); at 1024x1024 x 4 steps and
16 GB a feasible trial took ~40 s on the H200 and a worker ~2 min to start.

Workers start without the shipped presets (`--presets` names an empty folder; with
`--device cuda` each preset would be measured at start-up); `--with-presets` restores them.
The study still starts from the sweep's most frugal plan (measured at start-up, then trial 0).

Ctrl-C or SIGTERM stops every worker (one SIGINT each: its trial in flight FAIL, every
finished trial kept; SIGTERM after `--grace` s), then the studies are read back and written
all the same; `--deadline-s` does the same by itself before a device call's time limit.

Writes `OUTDIR/summary.json` (per storage: its phases) and `OUTDIR/logs.tgz` (worker logs and
results, journal files, the server log); the table:
`python benchmarks/distributed_tune_gpu_report.py OUTDIR...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import sys
import tarfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from benchmarks import dt_checks  # noqa: E402
from benchmarks.distributed_tune import machine, public_url, stop  # noqa: E402
from benchmarks.dt_postgres import LocalPostgres  # noqa: E402
from benchmarks.dt_workers import (  # noqa: E402
    Sampler,
    Worker,
    gpu_facts,
    gpus_shared,
    launch,
    log,
)
from resbench.tune.study import open_storage  # noqa: E402
from resbench.tune.trial_log import read_trial_log  # noqa: E402

STORAGES = ("postgresql", "journal", "sqlite")
RDB = ("postgresql", "sqlite")
CAMPAIGNS = {
    "a": ("postgresql@0,1", "postgresql@0+journal@1"),
    "b": ("journal@0,1", "postgresql@1+journal@0"),
}
REQUEST = ["--height", "512", "--width", "512", "--steps", "2"]
TINY_REQUEST = ["--height", "256", "--width", "256", "--steps", "2"]
PG_DISTS = ("wheels/postgresql-16.2-pgserver.tar.xz", "wheels-x2/postgresql-16.2-pgserver.tar.xz")


def parse_phase(text: str) -> list[tuple[str, list[str]]]:
    """`postgresql@0+journal@1` -> [("postgresql", ["0"]), ("journal", ["1"])]."""
    groups = []
    for part in text.split("+"):
        kind, _, gpus = part.partition("@")
        if kind not in STORAGES or not gpus:
            raise SystemExit(f"--phase {text!r}: each group is STORAGE@GPU[,GPU...] with "
                             f"STORAGE one of {', '.join(STORAGES)}, e.g. postgresql@0,1")
        groups.append((kind, gpus.split(",")))
    used = [g for _, gpus in groups for g in gpus]
    if len(set(used)) != len(used):
        raise SystemExit(f"--phase {text!r} puts two workers on one GPU; give each its own")
    return groups


@dataclass
class Group:
    """One study of a phase, its storage and its workers."""

    kind: str
    url: str
    name: str
    workers: list[Worker]
    storage: Any
    killed: list[int] = field(default_factory=list)
    failed_at: float | None = None
    stopped: bool = False

    @property
    def victim(self) -> Worker | None:
        return self.workers[-1] if len(self.workers) > 1 else None

    def alive(self) -> bool:
        return any(w.proc.poll() is None for w in self.workers)

    def stop(self, grace_s: float) -> None:
        for w in self.workers:
            w.interrupted |= w.proc.poll() is None
        stop([w.proc for w in self.workers], grace_s)
        self.stopped = True


def load(storage: optuna.storages.BaseStorage, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:  # not created yet
        return []


def window_end(g: Group, trials: list[optuna.trial.FrozenTrial], window_s: float) -> float | None:
    """When every worker of `g` has searched `window_s` from its own first trial (None: one
    still starting up)."""
    ends = []
    for w in g.workers:
        first = dt_checks.first_start(trials, w.id)
        if first is None and w.proc.poll() is None:
            return None
        if first is not None:
            ends.append(first + window_s)
    return max(ends, default=None)


def step(args: argparse.Namespace, g: Group) -> bool:
    """One look at group `g`: the kill, then its verdict. True: aiming at a trial."""
    victim = g.victim
    if victim is None or g.stopped or not g.alive():
        return False
    trials = load(g.storage, g.name)
    now = time.time()
    if victim.killed_at is None:
        end = window_end(g, trials, args.window_s)
        if end is None or now < end:
            return False
        busy = [t for t in trials if t.state.name == "RUNNING"
                and t.user_attrs.get("worker") == victim.id and t.datetime_start
                and now - t.datetime_start.timestamp() >= args.kill_after_s]
        if not busy and now < end + args.kill_within_s:
            return True
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        victim.killed_at = time.time()
        g.killed = [t.number for t in load(g.storage, g.name) if t.state.name == "RUNNING"
                    and t.user_attrs.get("worker") == victim.id]
        log(f"{g.name}: SIGKILL worker {victim.index} (pid {victim.proc.pid}) in trial(s) "
            f"{g.killed}")
        if not g.killed:  # between two trials: nothing to wait for
            g.stop(args.grace)
        return False
    states = {t.number: t.state.name for t in trials}
    if all(states.get(k) != "RUNNING" for k in g.killed):
        g.failed_at = now
        log(f"{g.name}: killed trial(s) {g.killed} now {[states.get(k) for k in g.killed]}, "
            f"{now - victim.killed_at:.0f} s after the kill; stopping the survivors (SIGINT)")
        g.stop(args.grace)
    elif now - victim.killed_at > args.kill_wait_s:
        log(f"{g.name}: killed trial(s) {g.killed} still RUNNING {args.kill_wait_s:g} s after "
            f"the kill; stopping the survivors")
        g.stop(args.grace)
    return False


def run_phase(args: argparse.Namespace, index: int, spec: str, pg: LocalPostgres | None,
              deadline: float) -> tuple[list[dict[str, Any]], str | None]:
    """Every group of phase `spec` at once; returns their summaries and why the launcher
    stopped early (None: it did not)."""
    groups = []
    workers: list[Worker] = []
    for kind, gpus in parse_phase(spec):
        n = len(gpus)
        name = f"dt-{kind}-{n}w-p{index}"
        work = args.work / f"p{index}-{kind}-{n}w"
        url = {"postgresql": pg.url if pg else "",
               "journal": str(work / "journal.log"),
               "sqlite": f"sqlite:///{work / 'study.db'}"}[kind]
        work.mkdir(parents=True, exist_ok=True)
        timeout_s = args.window_s + (args.kill_within_s + args.kill_wait_s + 60 if n > 1 else 0)
        group_workers = launch(args, url, name, gpus, timeout_s, work)
        groups.append(Group(kind, url, name, group_workers, open_storage(url)))
        workers += group_workers
        log(f"phase {index} ({spec}): {name}, GPU(s) {','.join(gpus)}, pids "
            f"{[w.proc.pid for w in group_workers]}")
    sampler = Sampler(workers, gpus=args.device == "cuda")
    sampler.start()
    interrupted: str | None = None  # "deadline" or "signal": the launcher stopped the run
    try:
        aiming = False  # waiting for a victim to be inside a trial: poll faster
        while any(g.alive() for g in groups):
            time.sleep(0.1 if aiming else args.poll_s)
            if time.time() > deadline:
                log(f"phase {index}: deadline reached; stopping the workers")
                interrupted = "deadline"
                break
            aiming = False
            for g in groups:
                aiming |= step(args, g)
    except KeyboardInterrupt:
        log(f"phase {index}: interrupted; stopping the workers (SIGINT each)")
        interrupted = "signal"
    finally:
        for w in workers:
            w.interrupted |= interrupted is not None and w.proc.poll() is None
        stop([w.proc for w in workers], args.grace)
        sampler.done.set()
        sampler.join()
        sampler.sample()
    shared = gpus_shared(workers)
    out = []
    for g in groups:
        trials = load(g.storage, g.name)
        if g.killed and g.failed_at is None and all(
                t.state.name != "RUNNING" for t in trials if t.number in g.killed):
            g.failed_at = time.time()  # ended by a survivor's last sweep
        out.append(group_summary(args, index, spec, g, trials, sampler, shared, interrupted))
    return out, interrupted


def group_summary(args: argparse.Namespace, index: int, spec: str, g: Group,
                  trials: list[optuna.trial.FrozenTrial], sampler: Sampler,
                  shared: bool | None, interrupted: str | None) -> dict[str, Any]:
    logs = {w.id: read_trial_log(w.log_path.read_text(errors="replace")) for w in g.workers}
    cut = [w.id for w in g.workers if w.killed_at is not None or w.interrupted]
    check = dt_checks.reconcile(trials, logs, cut)
    victim = next((w for w in g.workers if w.killed_at is not None), None)
    kill: dict[str, Any] | None = None
    if victim is not None:
        texts = "\n".join(w.log_path.read_text(errors="replace") for w in g.workers)
        by_sweep = any(f"trial {k} was left RUNNING" in texts for k in g.killed)
        states = {t.number: t.state.name for t in trials}
        ended = None if g.failed_at is None else g.failed_at - victim.killed_at
        kill = {"worker": victim.index, "trials": g.killed,
                # killed while holding the journal's lock: the others waited out its grace
                "journal_lock_forced": "Forcibly releasing the lock file" in texts,
                "states_after": [states.get(k) for k in g.killed],
                "ended_after_s": ended,
                "by": ("survivor's sweep (pid gone)" if by_sweep else
                       "heartbeat" if ended is not None and g.kind in RDB else
                       "nothing" if ended is None else "unknown")}
    results = []
    for w in g.workers:
        try:
            results.append(json.loads(w.json_path.read_text()))
        except (OSError, ValueError):
            results.append(None)
    return {
        "storage": g.kind, "workers": len(g.workers), "study": g.name, "phase": index,
        "phase_spec": spec, "interrupted": interrupted,
        "gpus": [w.gpu for w in g.workers],
        "gpu_uuids_seen": [sorted(w.gpu_seen) for w in g.workers],
        "gpus_shared": shared,  # across every worker of the phase, all groups
        "exit_codes": [w.proc.returncode for w in g.workers],
        "worker_ids": [w.id for w in g.workers],
        "startup_s": [None if (s := dt_checks.first_start(trials, w.id)) is None
                      else s - w.launched for w in g.workers],
        "startup_marks_s": [w.startup_marks_s() for w in g.workers],
        "trials_run": [None if r is None else r.get("trials_run") for r in results],
        "best_reported_s": [None if r is None else r["best"]["latency_s"] for r in results],
        "window": dt_checks.window(trials, args.window_s),
        "check": check, "duplicates": dt_checks.duplicates(check), "lost": dt_checks.lost(check),
        "kill": kill,
        "host_memory": {"per_worker_peak_bytes": [w.peak for w in g.workers],
                        "phase_workers": len(sampler.workers),
                        "host_used_before_bytes": sampler.host_used_before,
                        "host_used_peak_bytes": sampler.host_used_peak,
                        "host_total_at_peak_bytes": sampler.host_total_at_peak},
        "commands": [f"CUDA_VISIBLE_DEVICES={w.gpu} " + " ".join(public_url(c) if "://" in c
                                                                 else c for c in w.command)
                     for w in g.workers],
    }


def write(args: argparse.Namespace, docs: dict[str, dict[str, Any]]) -> Path:
    path = args.outdir / "summary.json"
    doc = {"schema": 2, "phases": args.phases, "storages": list(docs.values())}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path


def run(args: argparse.Namespace, deadline: float) -> str | None:
    """Every phase; returns why the launcher stopped early (None: it did not)."""
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    kinds = sorted({k for spec in args.phases for k, _ in parse_phase(spec)}, key=STORAGES.index)
    pg = LocalPostgres(args.pg_dist, args.work / "pg") if "postgresql" in kinds else None
    base = {"schema": 1, "args": {k: str(v) if isinstance(v, Path) else v
                                  for k, v in vars(args).items()},
            "machine": machine(), "gpu": gpu_facts()}
    for pkg in ("diffusers", "psycopg2-binary", "pandas"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            base["machine"]["versions"][pkg] = metadata.version(pkg)
    docs = {k: {**base, "storage": k, "phases": []} for k in kinds}
    stopped: str | None = None
    try:
        if pg is not None:
            pg.start()
            docs["postgresql"]["postgres"] = pg.version
            log(f"postgresql: {pg.version} on 127.0.0.1:{pg.port}")
        for index, spec in enumerate(args.phases):
            summaries, stopped = run_phase(args, index, spec, pg, deadline)
            for s in summaries:
                docs[s["storage"]]["phases"].append(s)
                w = s["window"]
                log(f"{s['study']}: {w['finished']} trials in the study's first {w['window_s']:g}"
                    f" s, {w['trials_per_min_own']:.1f}/min from each worker's first trial, best "
                    f"{w['best_latency_s']}, duplicates {s['duplicates']}, lost {s['lost']}, "
                    f"running {s['check']['running']}, kill {s['kill']}, start-up "
                    f"{[None if x is None else round(x) for x in s['startup_s']]} s, exit "
                    f"{s['exit_codes']}")
            write(args, docs)
            if stopped:
                log(f"{stopped}: phases not run: {args.phases[index + 1:]}")
                break
    finally:
        if pg is not None:
            pg.stop()
        path = write(args, docs)
        with tarfile.open(args.outdir / "logs.tgz", "w:gz") as tar:
            tar.add(args.work, arcname="dt", filter=lambda ti: None if "/pg/dist" in ti.name
                    or "/pg/data" in ti.name else ti)
        log(f"wrote {path} and {args.outdir / 'logs.tgz'}")
    return stopped


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--tiny", action="store_true",
                    help="CPU check: simulator workers, a small request")
    ap.add_argument("--campaign", choices=sorted(CAMPAIGNS), default=None,
                    help="a named list of phases (see the docstring)")
    ap.add_argument("--phase", action="append", default=None,
                    help="one phase, e.g. postgresql@0+journal@1 or journal@0,1 (repeatable)")
    ap.add_argument("--model", default="flux.1-dev")
    ap.add_argument("--engine", choices=("diffusers", "zoo"), default=None,
                    help="the workers' --engine (default: resbench's for the model)")
    ap.add_argument("--budget", default="24GB")
    ap.add_argument("--host-budget", default="100GiB")
    ap.add_argument("--hardware", default=None)
    ap.add_argument("--with-presets", action="store_true",
                    help="let each worker measure the shipped presets at start-up (with "
                         "--device cuda: several GPU runs each, some slow) and queue them")
    ap.add_argument("--window-s", type=float, default=75.0)
    ap.add_argument("--kill-wait-s", type=float, default=150.0,
                    help="after the kill, stop the survivors anyway after this long")
    ap.add_argument("--kill-after-s", type=float, default=None,
                    help="kill once the victim's trial has run this long [1; tiny: 0]")
    ap.add_argument("--kill-within-s", type=float, default=None,
                    help="kill anyway if no such trial is found within this [15; tiny: 10]")
    ap.add_argument("--deadline-s", type=float, default=435.0,
                    help="stop everything this long after the start, results written")
    ap.add_argument("--grace", type=float, default=30.0,
                    help="seconds a worker has to stop after SIGINT before SIGTERM")
    ap.add_argument("--poll-s", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pg-dist", type=Path, default=None,
                    help=f"PostgreSQL tarball or folder [first of {', '.join(PG_DISTS)}]")
    ap.add_argument("--work", type=Path, default=Path("/tmp/dtgpu"))
    args, request = ap.parse_known_args(argv)
    args.device = "sim" if args.tiny else "cuda"
    args.request = request or (TINY_REQUEST if args.tiny else REQUEST)
    args.phases = [*CAMPAIGNS.get(args.campaign or "", ()), *(args.phase or [])]
    if not args.phases:
        ap.error("give --campaign a|b or one --phase or more")
    for spec in args.phases:
        parse_phase(spec)
    if args.pg_dist is None:
        args.pg_dist = next((Path(p) for p in PG_DISTS if Path(p).exists()), Path(PG_DISTS[0]))
    if any("postgresql@" in spec for spec in args.phases) and not args.pg_dist.exists():
        ap.error(f"no PostgreSQL at {args.pg_dist}: give --pg-dist the carried "
                 f"postgresql-16.2-pgserver.tar.xz (or its unpacked folder)")
    if args.kill_after_s is None:
        args.kill_after_s = 0.0 if args.tiny else 1.0
    if args.kill_within_s is None:
        args.kill_within_s = 10.0 if args.tiny else 15.0
    if args.tiny:
        args.host_budget = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.deadline_s
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # SIGTERM (the device call's limit, `timeout`, a scheduler) stops the workers like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.device == "cuda":
        visible = len(gpu_facts()["gpus"])
        needed = max(int(g) for spec in args.phases for _, gpus in parse_phase(spec)
                     for g in gpus) + 1
        if visible < needed:
            raise SystemExit(f"the phases use GPUs 0-{needed - 1}; nvidia-smi lists {visible}")
    try:
        stopped = run(args, deadline)
    except KeyboardInterrupt:
        log("interrupted: workers stopped, results written")
        return 130
    if stopped == "signal":
        log("interrupted: workers stopped, results written")
        return 130
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
