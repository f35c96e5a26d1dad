#!/usr/bin/env bash
# The README's own GPU flow on a lent card, plus the GPU tests: one campaign, results in $OUT.
#   phase "tests":   pytest -m gpu on the device, expert-boundary equality and trial hygiene
#   phase "flow":    resbench calibrate; profile --device cuda (Wan2.2 A14B, 48 GB)
#   phase "tune":    tune --hardware <calibrated file> --validate 2 --device sim (48 GB)
# Usage (on the device machine, repository root): bash benchmarks/gpu_readme_flow.sh PHASE...
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
python -m pip install -q --no-index --find-links wheels optuna click rich tomli-w jinja2 \
    pandas matplotlib pytest hypothesis >"$OUT/pip.log" 2>&1 || tail -5 "$OUT/pip.log"
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv;
  python -c "import torch, optuna, pandas; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'optuna', optuna.__version__, 'pandas', pandas.__version__)"
  git log --oneline -1; } >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
REQ=(--height 480 --width 832 --frames 17 --steps 4)
for phase in "$@"; do
  case $phase in
    tests)
      /usr/bin/time -v python -m pytest -m gpu -q -s -p no:cacheprovider ${GPU_TESTS:-\
        tests/devices/test_cuda_weights.py tests/execution/test_cuda_trials.py tests/devices/test_cuda.py} \
        >"$OUT/gpu-tests.txt" 2>&1; echo "gpu tests rc=$?"; tail -15 "$OUT/gpu-tests.txt" ;;
    flow)
      mkdir -p "$OUT/flow"; cd "$OUT/flow" || exit 1
      t0=$(date +%s)
      python -m resbench calibrate --out h200-calibrated.toml --json >calibrate.json 2>calibrate.err
      echo "calibrate rc=$? $(( $(date +%s) - t0 )) s"; tail -2 calibrate.err
      t0=$(date +%s)
      python -m resbench profile --model wan2.2 "${REQ[@]}" --device cuda --budget 48GB \
        --hardware h200-calibrated.toml --out run-48GB --report run-48GB.html --json \
        >profile.json 2>profile.err
      echo "profile rc=$? $(( $(date +%s) - t0 )) s"; tail -3 profile.err
      cd - >/dev/null || exit 1 ;;
    tune)
      mkdir -p "$OUT/flow"; cp "${HW:-benchmarks/results/h200-calibrated.toml}" "$OUT/flow/hw.toml"
      cd "$OUT/flow" || exit 1
      t0=$(date +%s)
      python -m resbench tune --model wan2.2 "${REQ[@]}" --budget 48GB \
        --hardware hw.toml --n-trials 80 --seed 0 --validate 2 \
        --storage tune.log --out tuned-48GB.toml --report study.html --json \
        >tune.json 2>tune.err
      echo "tune rc=$? $(( $(date +%s) - t0 )) s"; tail -25 tune.err
      cd - >/dev/null || exit 1 ;;
  esac
done
cd "$OUT" && rm -rf flow/run-48GB && tar czf flow.tgz flow 2>/dev/null; rm -rf "$OUT/flow"; ls -la "$OUT"
