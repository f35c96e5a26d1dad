"""Bad input through every command: one line on stderr that names what is wrong (and what
would be right), the documented exit code, no traceback, and nothing written to stdout.

The table's arguments may name `{work}` (a folder of fixtures shared by the module: a saved
run, a tuning journal, broken copies of both, plan files) and `{tmp}` (the test's own
folder). Tiny requests keep every case under a few seconds."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path

import pytest
import torch

from resbench.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY_SWEEP = REPO / "tests" / "tune" / "tiny-sweep.toml"
PROFILE = ["profile", "--model", "wan2.1-1.3b", "--scale", "0.02", "--steps", "1", "--height",
           "64", "--width", "64", "--frames", "5", "--device", "sim",
           "--plan", str(REPO / "strategies" / "presets" / "sglang-wan2.2.toml")]
TUNE = ["tune", "--model", "wan2.1-1.3b", "--scale", "0.05", "--height", "128", "--width", "128",
        "--frames", "5", "--steps", "4", "--sweep", str(TINY_SWEEP), "--hardware", "h100-80g",
        "--seed", "0", "--presets", "{work}/no-presets", "--n-trials", "2"]
TUNE_OK = [*TUNE, "--budget", "60MB", "--storage", "{tmp}/study.log", "--no-report"]

PLANS = {
    "syntax.toml": "schema = 1\n[components.default\nstrategy = 'resident'\n",
    "unknown-key.toml": "schema = 1\nprefetch_everything = true\n",
    "empty.toml": "# nothing but a comment\n",
    "types.toml": "schema = 1\n[components.dit]\nstrategy = 'layerwise'\ngroup_size = 'two'\n",
    "too-many-resident.toml": "schema = 1\n[components.transformer]\nstrategy = 'layerwise'\n"
                              "resident_blocks = 999\n",
    "schema2.toml": "schema = 2\n[components.default]\nstrategy = 'resident'\n",
    "no-component.toml": "schema = 1\n[components.transformer_9]\nstrategy = 'resident'\n",
    "no-strategy.toml": "schema = 1\n[components.vae]\nstrategy = 'teleport'\n",
}
SWEEPS = {
    "sweep-syntax.toml": "schema = 1\n[components.dit\n",
    "sweep-empty.toml": "",
    "sweep-unknown.toml": "schema = 1\nbogus = 1\n",
}
HARDWARE = {"hw-syntax.toml": "schema = 1\nname = \n", "hw-empty.toml": ""}

# (id, argv, exit code, text the error line contains)
CASES = [
    # models, hardware, the group
    ("models-unknown", ["models", "show", "wan2.3"], 2, "did you mean wan2.2"),
    ("models-bad-subcommand", ["models", "list-all"], 2, "No such command 'list-all'"),
    ("unknown-command", ["profiles"], 2, "No such command 'profiles'"),
    ("hardware-unknown", ["hardware", "show", "h100"], 2, "did you mean h100-80g"),
    ("hardware-toml-syntax", ["hardware", "show", "{work}/hw-syntax.toml"], 2,
     "cannot read hardware profile"),
    ("hardware-toml-empty", ["hardware", "show", "{work}/hw-empty.toml"], 2,
     "no `schema` key; this resbench reads hardware profile schema 1"),
    # profile: sizes
    ("budget-garbage", [*PROFILE, "--budget", "48 parsecs"], 2, "cannot read '48 parsecs' as a size"),
    ("budget-unit", [*PROFILE, "--budget", "48XB"], 2, "GB, TB = powers of 1000"),
    ("budget-negative", [*PROFILE, "--budget", "-1GB"], 2, "budget: must be > 0, got '-1GB'"),
    ("budget-zero", [*PROFILE, "--budget", "0"], 2, "budget: must be > 0"),
    ("budget-overflowing", [*PROFILE, "--budget", "99999999999TB"], 2,
     "is above h100-80g's 85.02 GB; give a smaller --budget"),
    ("budget-infinite", [*PROFILE, "--budget", "1e400"], 2, "'1e400' is not a finite size"),
    # profile: unknown names
    ("profile-unknown-model", [*PROFILE, "--model", "wan9"], 2, "unknown model 'wan9'"),
    ("profile-unknown-plan", [*PROFILE, "--plan", "sglang"], 2,
     "neither a file nor a preset: did you mean sglang-wan2.2? presets:"),
    ("profile-unknown-hardware", [*PROFILE, "--hardware", "h900"], 2, "did you mean h100-80g"),
    ("profile-hardware-toml-syntax", [*PROFILE, "--hardware", "{work}/hw-syntax.toml"], 2,
     "cannot read hardware profile"),
    ("profile-bad-device", [*PROFILE, "--device", "tpu"], 2,
     "'tpu' is not one of 'auto', 'sim', 'cuda', 'cpu'"),
    # profile: plan TOML
    ("plan-syntax", [*PROFILE, "--plan", "{work}/syntax.toml"], 2, "not valid TOML"),
    ("plan-unknown-key", [*PROFILE, "--plan", "{work}/unknown-key.toml"], 2,
     "prefetch_everything: unknown key; valid keys: buffer_margin, components"),
    ("plan-empty", [*PROFILE, "--plan", "{work}/empty.toml"], 2, "the plan is empty"),
    ("plan-wrong-type", [*PROFILE, "--plan", "{work}/types.toml"], 2,
     "components.dit.group_size: must be an integer, got 'two'"),
    ("plan-resident-blocks", [*PROFILE, "--plan", "{work}/too-many-resident.toml"], 2,
     "resident_blocks = 999, but transformer has 10 blocks; use 0 to 10"),
    ("plan-schema", [*PROFILE, "--plan", "{work}/schema2.toml"], 2,
     "schema 2 found; this resbench reads schema 1"),
    ("plan-no-component", [*PROFILE, "--plan", "{work}/no-component.toml"], 2,
     "no component 'transformer_9'; components: text_encoder, transformer, vae"),
    ("plan-no-strategy", [*PROFILE, "--plan", "{work}/no-strategy.toml"], 2,
     "'teleport' is not a strategy; valid:"),
    ("plan-is-a-folder", [*PROFILE, "--plan", "{work}/adir"], 2, "is a folder; give a .toml file"),
    # profile: the request
    ("frames-zero", [*PROFILE, "--frames", "0"], 2, "0 is not in the range 1<=x<=1025"),
    ("steps-negative", [*PROFILE, "--steps", "-2"], 2, "-2 is not in the range 1<=x<=1000"),
    ("steps-huge", [*PROFILE, "--steps", "100000000"], 2, "not in the range 1<=x<=1000"),
    ("batch-zero", [*PROFILE, "--batch", "0"], 2, "0 is not in the range 1<=x<=64"),
    ("request-too-large", [*PROFILE, "--height", "16384", "--width", "16384", "--frames", "1025"],
     2, "is too large: its latents alone take"),
    ("frames-model-rule", [*PROFILE, "--frames", "80"], 2, "frames must be 4·k+1 (e.g. 81)"),
    ("scale-zero", [*PROFILE, "--scale", "0"], 2, "0.0 is not in the range 0<x<=1"),
    ("steps-not-a-number", [*PROFILE, "--steps", "two"], 2, "'two' is not a valid integer"),
    # profile: outputs, checked before the run
    ("out-is-a-file", [*PROFILE, "--out", "{work}/afile"], 2, "is a file; give a new folder"),
    ("out-holds-other-files", [*PROFILE, "--out", "{work}/junk"], 2,
     "holds files but no run; resbench does not delete them even with --force"),
    ("out-holds-a-run", [*PROFILE, "--out", "{work}/run"], 2,
     "already holds a run; pass --force to replace it whole"),
    ("report-is-a-folder", [*PROFILE, "--out", "{tmp}/r", "--report", "{work}/adir"], 2,
     "--report: '{work}/adir' is a folder; give a file path"),
    ("report-in-a-file", [*PROFILE, "--out", "{tmp}/r", "--report", "{work}/afile/r.html"], 2,
     "--report: '{work}/afile' is a file, not a folder"),
    ("report-unwritable", [*PROFILE, "--out", "{tmp}/r", "--report", "{ro}/r.html"], 2,
     "--report: cannot write in '{ro}'"),
    ("out-unwritable", [*PROFILE, "--out", "{ro}/run"], 2, "run folder: cannot write in '{ro}'"),
    # tune
    ("tune-no-budget", [*TUNE], 2, "Missing option '--budget'"),
    ("tune-budget-overflowing", [*TUNE, "--budget", "99999999999TB"], 2,
     "is above the capacity of h100-80g"),
    ("tune-budget-garbage", [*TUNE, "--budget", "lots"], 2, "cannot read 'lots' as a size"),
    ("tune-host-budget-negative", [*TUNE_OK, "--host-budget", "-4GiB"], 2,
     "host_budget: must be > 0"),
    ("tune-sweep-missing", [*TUNE_OK, "--sweep", "{work}/nope.toml"], 2, "does not exist"),
    ("tune-sweep-syntax", [*TUNE_OK, "--sweep", "{work}/sweep-syntax.toml"], 2,
     "not valid TOML"),
    ("tune-sweep-empty", [*TUNE_OK, "--sweep", "{work}/sweep-empty.toml"], 2,
     "this resbench reads sweep schema 1 (write `schema = 1` at the top)"),
    ("tune-sweep-unknown-key", [*TUNE_OK, "--sweep", "{work}/sweep-unknown.toml"], 2,
     "bogus: unknown key; valid keys:"),
    ("tune-n-trials-zero", [*TUNE_OK, "--n-trials", "0"], 2, "0 is not in the range x>=1"),
    ("tune-timeout-negative", [*TUNE_OK, "--timeout", "-5"], 2, "is not in the range x>0"),
    ("tune-objectives", [*TUNE_OK, "--objectives", "speed"], 2, "use `latency`"),
    ("tune-frames-zero", [*TUNE_OK, "--frames", "0"], 2, "0 is not in the range 1<=x<=1025"),
    ("tune-out-is-a-folder", [*TUNE_OK, "--out", "{work}/adir"], 2, "is a directory"),
    ("tune-out-unwritable", [*TUNE_OK, "--out", "{ro}/plan.toml"], 2,
     "--out: cannot write in '{ro}'"),
    ("tune-out-in-a-file", [*TUNE_OK, "--out", "{work}/afile/plan.toml"], 2,
     "--out: '{work}/afile' is a file, not a folder"),
    ("tune-report-in-a-file", [*TUNE[:-2], "--budget", "60MB", "--storage", "{tmp}/study.log",
                               "--report", "{work}/afile/r.html"], 2,
     "--report: '{work}/afile' is a file"),
    ("tune-storage-in-a-file", [*TUNE_OK, "--storage", "{work}/afile/study.log"], 2,
     "--storage: '{work}/afile' is a file, not a folder"),
    ("tune-storage-url", [*TUNE_OK, "--storage", "mysql+nodriver://x/y"], 2,
     "cannot open study storage 'mysql+nodriver://x/y'"),
    ("tune-journal-damaged", [*TUNE_OK, "--storage", "{work}/damaged.log"], 2,
     "line 2 is not a complete record"),
    ("tune-nothing-fits", [*TUNE_OK, "--budget", "1MB"], 3,
     "no plan fits 1.00 MB on h100-80g"),
    # report
    ("report-missing", ["report", "{work}/nothing-here"], 2,
     "is neither a run folder (with run.json) nor a study storage"),
    ("report-run-json-truncated", ["report", "{work}/truncated"], 2,
     "run.json: not valid JSON"),
    ("report-events-truncated", ["report", "{work}/torn-events"], 2,
     "events.csv.gz: damaged or truncated"),
    ("report-plan-missing", ["report", "{work}/no-plan"], 2,
     "plan.toml is missing; the run is incomplete"),
    ("report-run-schema", ["report", "{work}/schema9"], 2,
     "run schema 9 found; this resbench reads run schema 1"),
    ("report-schedule-schema", ["report", "{work}/schedule9"], 2,
     "schedule schema 9 found; this resbench reads schedule schema 1"),
    ("report-unfinished-run", ["report", "{work}/.run.123-abcd.partial"], 2,
     "left unfinished by an interrupted save"),
    ("report-out-is-a-folder", ["report", "{work}/run", "-o", "{work}/adir"], 2,
     "--out: '{work}/adir' is a folder"),
    ("report-out-unwritable", ["report", "{work}/run", "-o", "{ro}/r.html"], 2,
     "--out: cannot write in '{ro}'"),
    ("report-db-missing", ["report", "{work}/nope.db"], 2, "does not exist"),
    ("report-no-such-study", ["report", "{work}/study.log", "--study", "nope"], 2,
     "no study 'nope' in"),
    # compare
    ("compare-missing", ["compare", "{work}/run", "{work}/nothing-here"], 2,
     "'{work}/nothing-here' does not exist"),
    ("compare-not-a-run", ["compare", "{work}/run", "{work}/adir"], 2, "is not a run: no run.json"),
    ("compare-fail-on", ["compare", "{work}/run", "{work}/run", "--fail-on", "5%"], 2,
     "'5%' is not a valid float"),
    ("compare-truncated", ["compare", "{work}/run", "{work}/truncated"], 2, "not valid JSON"),
    # export trace
    ("export-missing", ["export", "trace", "{work}/nothing-here"], 2, "does not exist"),
    ("export-out-is-a-folder", ["export", "trace", "{work}/run", "-o", "{work}/adir"], 2,
     "--out: '{work}/adir' is a folder"),
    ("export-out-unwritable", ["export", "trace", "{work}/run", "-o", "{ro}/t.json"], 2,
     "--out: cannot write in '{ro}'"),
    ("export-max-events", ["export", "trace", "{work}/run", "--max-events", "0"], 2,
     "0 is not in the range x>=1"),
    ("export-detail", ["export", "trace", "{work}/run", "--detail", "some"], 2,
     "'some' is not one of 'auto', 'all', 'ends'"),
    ("export-schedule-damaged", ["export", "trace", "{work}/torn-schedule", "-o", "{tmp}/t.json"],
     2, "schedule.json.gz: damaged or truncated"),
    # export sglang / diffusers
    ("export-sglang-no-plan", ["export", "sglang", "nope"], 2, "neither a file nor a preset"),
    ("export-diffusers-budget", ["export", "diffusers", "all-resident", "--budget", "lots"], 2,
     "--budget"),
    # calibrate
    ("calibrate-out-is-a-folder", ["calibrate", "--out", "{work}/adir"], 2, "is a directory"),
    ("calibrate-out-unwritable", ["calibrate", "--out", "{ro}/card.toml"], 2,
     "--out: cannot write in '{ro}'"),
]
if not torch.cuda.is_available():
    CASES += [
        ("profile-cuda-without-gpu", [*PROFILE, "--device", "cuda"], 2,
         "--device cuda: no CUDA GPU here"),
        ("calibrate-without-gpu", ["calibrate", "--out", "{tmp}/card.toml"], 2,
         "calibrate needs a CUDA GPU; none found"),
    ]


def run_cli(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def copy_run(work: Path, name: str) -> Path:
    out = work / name
    shutil.copytree(work / "run", out)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved run, a journal with a study, and broken things made from them."""
    work = tmp_path_factory.mktemp("bad-input")
    for name, text in {**PLANS, **SWEEPS, **HARDWARE}.items():
        (work / name).write_text(text)
    (work / "afile").write_text("a file, not a folder")
    (work / "adir").mkdir()
    (work / "junk").mkdir()
    (work / "junk" / "notes.txt").write_text("someone's notes")
    with pytest.raises(SystemExit) as made:
        main([*PROFILE, "--out", str(work / "run"), "--report", str(work / "run.html")])
    assert made.value.code == 0
    with pytest.raises(SystemExit) as made:
        main([*(a.format(work=work, tmp=work) for a in TUNE_OK), "--out", str(work / "p.toml")])
    assert made.value.code == 0
    lines = (work / "study.log").read_bytes().splitlines(keepends=True)
    (work / "damaged.log").write_bytes(lines[0] + b'{"op_code": 4, "worker_id\n' + b"".join(lines[1:]))

    meta = (work / "run" / "run.json").read_text()
    (copy_run(work, "truncated") / "run.json").write_text(meta[: len(meta) // 2])
    events = (work / "run" / "events.csv.gz").read_bytes()
    (copy_run(work, "torn-events") / "events.csv.gz").write_bytes(events[: len(events) // 2])
    (copy_run(work, "no-plan") / "plan.toml").unlink()
    doc = json.loads(meta)
    doc["schema"] = 9
    (copy_run(work, "schema9") / "run.json").write_text(json.dumps(doc))
    schedule = (work / "run" / "schedule.json.gz").read_bytes()
    (copy_run(work, "torn-schedule") / "schedule.json.gz").write_bytes(schedule[:100])
    sched = json.loads(gzip.decompress(schedule))
    sched["schema"] = 9
    (copy_run(work, "schedule9") / "schedule.json.gz").write_bytes(
        gzip.compress(json.dumps(sched).encode()))
    copy_run(work, ".run.123-abcd.partial")  # complete but for the final rename
    return work


@pytest.mark.parametrize(("argv", "code", "text"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_a_documented_code(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, work: Path,
        tmp_path: Path, unwritable_dir: Path, argv: list[str], code: int, text: str) -> None:
    monkeypatch.chdir(tmp_path)  # default outputs (runs/, reports/) land here
    names = {"work": work, "tmp": tmp_path, "ro": unwritable_dir}
    before = sorted(p.name for p in work.iterdir())
    got, out, err = run_cli(capsys, [a.format(**names) for a in argv])
    assert got == code, err
    assert out == ""
    assert "Traceback" not in err
    errors = [line.rstrip() for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert err.rstrip().splitlines()[-1] == errors[0]  # the last thing said
    assert text.format(**names) in errors[0]
    assert sorted(p.name for p in work.iterdir()) == before  # nothing written beside


def test_there_are_enough_cases() -> None:
    commands = {c[1][0] for c in CASES}
    assert {"models", "hardware", "profile", "tune", "report", "compare", "export",
            "calibrate"} <= commands
    assert len(CASES) >= 40


@pytest.mark.parametrize(("argv", "work_fn"), [
    ([*PROFILE, "--out", "{tmp}/r", "--report", "{work}/adir"], "resbench.cli.profile_cmd.run_profile"),
    ([*PROFILE, "--out", "{work}/run"], "resbench.cli.profile_cmd.run_profile"),
    ([*TUNE_OK, "--out", "{work}/afile/plan.toml"], "resbench.cli.tune_cmd.tune"),
    ([*TUNE[:-2], "--budget", "60MB", "--storage", "{tmp}/study.log", "--report",
      "{work}/adir"], "resbench.cli.tune_cmd.tune"),
    (["export", "trace", "{work}/run", "-o", "{work}/adir"], "resbench.run.load_run"),
    (["report", "{work}/run", "-o", "{work}/adir"], "resbench.run.load_run"),
], ids=["profile-report", "profile-out", "tune-out", "tune-report", "export-out", "report-out"])
def test_output_paths_are_checked_before_any_work(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, work: Path,
        tmp_path: Path, argv: list[str], work_fn: str) -> None:
    def started(*_a: object, **_k: object) -> None:
        raise AssertionError("the long work started before the output paths were checked")

    monkeypatch.setattr(work_fn, started)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    code, _, err = run_cli(capsys, [a.format(work=work, tmp=tmp_path) for a in argv])
    assert code == 2 and "AssertionError" not in err, err
    assert not (tmp_path / "study.log").exists()  # the study was not even opened
    assert time.perf_counter() - start < 5


def test_a_missing_output_folder_is_created_not_refused(
        capsys: pytest.CaptureFixture[str], work: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "t.json"
    code, _, err = run_cli(capsys, ["export", "trace", str(work / "run"), "-o", str(out)])
    assert code == 0, err
    assert json.loads(out.read_text())["traceEvents"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["t.json"]  # no temporary left
