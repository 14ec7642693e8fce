#!/usr/bin/env bash
# The one prepared device check for a session that has the H200 (not run without one).
#
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
#
# Paper config (configs/ssacl_vitb16.py:bf16: bfloat16 compute, float32 parameters), one H200:
#   1. environment: jax version, devices (stops here when JAX sees no GPU);
#   2. bench/train_step.py at batch $TRAIN_BATCH: compile time, median step over 10 steps,
#      examples/s, device peak memory, compiled memory, FLOPs (XLA and by hand), MFU against
#      989 TFLOP/s dense bf16; one extra step traced with jax.profiler, its optimized HLO
#      dumped, and bench/profile_top.py's top ops / kinds of that trace;
#   3. bench/generate.py, beam 3 and greedy, at batch $GEN_BATCH (100 new tokens, >= 80);
#   4. a short real training run (python -m ssacl_jax.main, $RUN_STEPS steps at batch
#      $TRAIN_BATCH on the built-in synthetic set) with train.profile_steps: its per-interval
#      step time / examples/s / MFU, the goodput summary (metrics.jsonl) and the profile
#      (bench/profile_top.py of WORKDIR/profile), then a second start of the same run for
#      the persistent compilation cache (compile seconds in its goodput).
# Every step runs under `timeout` and the script goes on when one fails, so a single run
# (about 6-8 minutes with compiles) brings back whatever finished. Results land in $OUT
# (the device tool's output folder) or bench/results/gpu/.
#
# Budget: at most 15 minutes of device time per session, starts included; keep the run
# tool's timeout_s near 540 so there is time for one rerun. CHECKS picks the parts (default
# all: "step generate run"); all four take longer than one 10-minute command, so run e.g.
# CHECKS="step generate" and then CHECKS=run.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results/gpu}"
mkdir -p "$OUT_DIR"
TRAIN_BATCH="${TRAIN_BATCH:-32}"
GEN_BATCH="${GEN_BATCH:-32}"
export JAX_PLATFORMS="${JAX_PLATFORMS:-cuda}"
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
CONFIG="configs/ssacl_vitb16.py:bf16"
CHECKS="${CHECKS:-step generate run}"
want() { case " $CHECKS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT_DIR/gpu_check.log"; }

log "1. environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  python -c "import jax, jaxlib; print('jax', jax.__version__, jaxlib.__version__); print(jax.devices())"
} 2>&1 | tee -a "$OUT_DIR/gpu_check.log"
if ! python -c "import jax, sys; sys.exit(0 if jax.default_backend() == 'gpu' else 1)" 2>/dev/null; then
  log "JAX sees no GPU (install jax[cuda12]==0.10.2 matching jaxlib); stopping"
  exit 2
fi

if want step; then
log "2. train step, $CONFIG, batch $TRAIN_BATCH"
timeout 300 python bench/train_step.py --config "$CONFIG" --batch "$TRAIN_BATCH" \
  --steps 10 --warmup 2 --quiet_wait 0 --max_attempts_factor 1 \
  --profile_dir "$OUT_DIR/trace_train" --dump_hlo "$OUT_DIR/train_step.hlo.txt" \
  --json "$OUT_DIR/train_step_b${TRAIN_BATCH}_bf16.json" > "$OUT_DIR/train_step.log" 2>&1
log "   exit $? ; $(grep -E '"(compile_s|median_step_s|examples_per_s|mfu_hand|mfu_xla|device_peak_gib)"' "$OUT_DIR/train_step_b${TRAIN_BATCH}_bf16.json" 2>/dev/null | tr -d '\n ')"
if [ -d "$OUT_DIR/trace_train" ]; then
  timeout 60 python bench/profile_top.py "$OUT_DIR/trace_train" --top 40 \
    --hlo "$OUT_DIR/train_step.hlo.txt" --json "$OUT_DIR/profile_top_train.json" > /dev/null 2>&1
  log "   profile: exit $? ; $(python - "$OUT_DIR/profile_top_train.json" <<'EOF' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
print("span_ms", d.get("span_ms"), "| kinds:", "; ".join(
    f"{r['name']} {r['pct_of_op_time']}%" for r in d.get("top_kinds", [])[:8]))
EOF
)"
  # the raw trace is large; keep only the summary and the trace.json.gz
  find "$OUT_DIR/trace_train" -name "*.xplane.pb" -delete 2>/dev/null
fi

fi

if want generate; then
log "3. generation, beam 3 + greedy, batch $GEN_BATCH"
timeout 300 python bench/generate.py --config "$CONFIG" --batches "$GEN_BATCH" \
  --methods beam,greedy --repeats 3 --json "$OUT_DIR/generate_b${GEN_BATCH}_bf16.json" \
  > "$OUT_DIR/generate.log" 2>&1
log "   exit $? ; $(grep -E '"seconds_per_report"|"method"' "$OUT_DIR/generate_b${GEN_BATCH}_bf16.json" 2>/dev/null | tr -d '\n ')"
fi

if want run; then
log "4. training run with a profile and goodput, $CONFIG, batch $TRAIN_BATCH"
RUN_STEPS="${RUN_STEPS:-40}"
RUN_DIR="${RUN_DIR:-/tmp/ssacl_gpu_run}"
rm -rf "$RUN_DIR/run" "$RUN_DIR/compilation_cache"
# The paper config asks for :from_scratch where it otherwise wants pretrained weights.
RUN_CONFIG="$CONFIG"
python -c "from configs import ssacl_vitb16 as m; m.get_config('from_scratch')" 2>/dev/null \
  && RUN_CONFIG="$CONFIG,from_scratch"
run_train() {  # $1: steps
  timeout 420 python -m ssacl_jax.main --config "$RUN_CONFIG" --workdir "$RUN_DIR/run" \
    --config.data.data_dir="$RUN_DIR/data" --config.train.global_batch_size="$TRAIN_BATCH" \
    --config.train.num_steps="$1" --config.train.log_every_steps=10 \
    --config.train.eval_every_steps=0 --config.train.checkpoint_every_steps=1000 \
    --config.train.profile_steps="(22,24)" --config.checkpoint.async_save=True
}
run_train "$RUN_STEPS" > "$OUT_DIR/train_run.log" 2>&1
log "   exit $? ; $(grep -h '"perf/mfu"\|goodput' "$RUN_DIR/run/metrics.jsonl" 2>/dev/null | tail -2 | tr -d '\n ')"
cp "$RUN_DIR/run/metrics.jsonl" "$OUT_DIR/train_run_metrics.jsonl" 2>/dev/null
if [ -d "$RUN_DIR/run/profile" ]; then
  timeout 60 python bench/profile_top.py "$RUN_DIR/run/profile" --top 40 \
    --json "$OUT_DIR/profile_top_train_run.json" > /dev/null 2>&1
  log "   profile: exit $? ; $(ls "$RUN_DIR"/run/profile/plugins/profile/*/ 2>/dev/null | tr '\n' ' ')"
fi
# A second start: resumes at the last step, so it only restores and compiles (cache warm).
run_train "$((RUN_STEPS + 1))" > "$OUT_DIR/train_run_second_start.log" 2>&1
log "   second start: exit $? ; $(grep -h goodput "$RUN_DIR/run/metrics.jsonl" 2>/dev/null | tail -1 | tr -d '\n ')"
cp "$RUN_DIR/run/metrics.jsonl" "$OUT_DIR/train_run_metrics.jsonl" 2>/dev/null
fi
log "done"
