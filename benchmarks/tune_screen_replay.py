"""Which of distributed run 2's GPU trials would `tune --device cuda`'s screen have skipped?

    mkdir /tmp/r && for c in a b; do mkdir /tmp/r/$c && tar xzf \
        benchmarks/results/distributed_gpu_run2/$c/logs.tgz -C /tmp/r/$c; done
    python benchmarks/tune_screen_replay.py /tmp/r

Reads every journal file under the folder (run 2's journal studies: each trial's plan, and
whether it ran out of memory on the GPU), replays each plan through `Evaluator.screen` as the
workers were set up (FLUX.1-dev 512x512, 2 steps, the `h200-141g` preset, 24 GB, margin
10 %), and counts the out-of-memory trials the screen skips and the fitting ones it would
wrongly skip. CPU, about 15 s (the schedule is recorded on the meta device).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resbench.engines.base import make_engine  # noqa: E402
from resbench.models.registry import get_model  # noqa: E402
from resbench.pipeline import Request  # noqa: E402
from resbench.profile import resolve_hardware  # noqa: E402
from resbench.residency.plan import plan_from_dict  # noqa: E402
from resbench.tune.objective import Evaluator  # noqa: E402


class NeverRun:
    """A measuring backend: the screen is all that is asked of the evaluator here."""

    measured = True

    def run(self, plan: object, capacity_bytes: int | None) -> None:
        raise AssertionError("replay only screens")


def trials(journal: Path) -> dict[int, tuple[str, bool | None]]:
    """trial id -> (plan TOML, fits on the GPU) from an optuna journal file."""
    plans: dict[int, str] = {}
    fits: dict[int, bool] = {}
    with journal.open() as f:
        for line in f:
            op = json.loads(line)
            attrs = op.get("user_attr") or {}
            if "plan_toml" in attrs:
                plans[op["trial_id"]] = attrs["plan_toml"]
            if "fits" in attrs:
                fits[op["trial_id"]] = attrs["fits"]
    return {tid: (text, fits.get(tid)) for tid, text in plans.items()}


def main(root: Path) -> None:
    spec = get_model("flux.1-dev")
    schedule = make_engine(None, spec).record(Request.for_model(spec, height=512, width=512,
                                                                steps=2))
    ev = Evaluator(schedule, resolve_hardware("h200-141g"), budget_bytes=24_000_000_000,
                   host_budget_bytes=100 * 2**30, backend=NeverRun(),  # type: ignore[arg-type]
                   screen_fraction=0.10)
    rows = []
    for journal in sorted(root.rglob("journal.log")):
        for tid, (text, fits) in sorted(trials(journal).items()):
            screened = ev.screen(plan_from_dict(tomllib.loads(text)),
                                 ev.sim_capacity(ev.budget_bytes)) is not None
            rows.append((journal.parent.name, tid, fits, screened))
            print(journal.parent.name, tid, "fits" if fits else "OOM",
                  "screened" if screened else "run")
    oom = [r for r in rows if r[2] is False]
    fit = [r for r in rows if r[2] is True]
    print(f"out-of-memory trials on the GPU: {len(oom)}, screened {sum(r[3] for r in oom)}; "
          f"fitting trials: {len(fit)}, wrongly screened {sum(r[3] for r in fit)}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
