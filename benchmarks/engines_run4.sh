#!/usr/bin/env bash
# Engines run 4 (issue 13) on the nvidia-h200-x2 host, one phase per device call:
#   bash benchmarks/engines_run4.sh a   # FLUX rows not reached (GPU 0) beside Wan 81f 24 GB (GPU 1)
#   bash benchmarks/engines_run4.sh b   # Wan 17f alone on the host (GPU 0): group offload with streams
#   bash benchmarks/engines_run4.sh c   # Wan 17f alone: leaf-level group offload with streams (cut
#                                       # in b by the time limit) beside the tuned 24 GB plan
#   bash benchmarks/engines_run4.sh d   # Wan 81f leaf-level group offload with streams (GPU 0)
#                                       # beside FLUX's steady-state keep_resident plans (GPU 1)
# Everything goes under $OUT/<phase>: per process a folder (cells.csv/json, profiles.tar.gz) and
# its log, the cards and the host's memory.
set -u
phase=$1
out=$OUT/$phase
mkdir -p "$out"
python -m pip install -q --no-index --find-links wheels-x2 optuna sqlalchemy alembic colorlog mako \
    tomli_w importlib_metadata diffusers
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv; nproc;
  free -g; git log --oneline -1 2>/dev/null; } > "$out/env.txt" 2>&1
engines() {  # GPU FOLDER SECONDS ARGS...
    local gpu=$1 name=$2 secs=$3; shift 3
    CUDA_VISIBLE_DEVICES=$gpu timeout -k 10 "$secs" python3 benchmarks/engines.py "$out/$name" \
        --limit-s $((secs - 30)) "$@" > "$out/$name.log" 2>&1
}
case $phase in
a)
    engines 0 f0 560 --cells flux-1024-s8 --host-limit-gb 110 --rows card:no-offload,\
16:group-block-stream,24:tuned,24:plan:flux-1024-s8-24GB-drop.toml,16:tuned,\
16:plan:flux-1024-s8-16GB-drop.toml,16:group-block-stream,16:group-leaf-stream,16:group-block,\
16:group-leaf,16:sequential-offload,16:group-block-stream-lowmem,16:group-leaf-stream-lowmem &
    engines 1 w1 560 --cells wan-480x832x81-s4 --host-limit-gb 110 \
        --rows 24:tuned,24:accelerate-dispatch &
    wait ;;
b)
    engines 0 w0 500 --cells wan-480x832x17-s4 --host-limit-gb 230 --rows card:no-offload,\
24:tuned,48:tuned,24:preset:sglang-wan2.2,24:group-block-stream,24:group-leaf-stream,\
24:group-block-stream-lowmem ;;
c)
    engines 0 w0 330 --cells wan-480x832x17-s4 --host-limit-gb 230 \
        --rows 24:tuned,24:group-leaf-stream ;;
d)
    engines 0 w0 295 --cells wan-480x832x81-s4 --host-limit-gb 200 --rows 24:group-leaf-stream &
    engines 1 f1 240 --cells flux-1024-s8 --host-limit-gb 45 --rows \
24:plan:flux-1024-s8-24GB-drop.toml,24:plan:flux-1024-s8-24GB-keep.toml,\
16:plan:flux-1024-s8-16GB-keep.toml,16:tuned &
    wait ;;
*)
    echo "engines_run4.sh: unknown phase '$phase'; phases are a, b, c and d" >&2; exit 2 ;;
esac
free -g >> "$out/env.txt"
for f in "$out"/*.log; do tail -n 3 "$f"; done
