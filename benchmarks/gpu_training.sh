#!/usr/bin/env bash
# Training throughput of the bundle's r3d_18 on one CUDA GPU at 128^3: trainable layer4+fc and all, fp32 and bf16
# (plus bf16 with channels_last_3d, and cuDNN autotuning), batch 2 / 8 / 32. Each configuration runs the bundle's
# own `benchmarking` workflow (configs/benchmark.json) with random weights and synthetic volumes, writes
# $OUT/<name>.json, and the script ends with a summary table ($OUT/summary.txt). A configuration that runs out of
# memory is recorded as OOM and the others still run; one that fails otherwise is recorded as FAILED.
#
#   OUT=/tmp/bench benchmarks/gpu_training.sh          # on a CUDA machine: about 5-8 minutes on an H100/H200
#   BENCH_TINY=1 OUT=/tmp/bench benchmarks/gpu_training.sh   # 16^3, one timed step, on the CPU: checks the script
# BENCH_SIZE, BENCH_BATCHES ("2 8 32"), BENCH_TRAINABLE ("layer4+fc all") and BENCH_VARIANTS (1: also the
# channels_last and cuDNN-autotuning runs; 0: not) narrow the sweep.
#
# Then the architecture comparison (issue 11): every --arch at BENCH_SIZE, batch 2 (BENCH_ARCH_BATCHES), trainable
# layer4+fc and all (BENCH_ARCH_TRAINABLE), fp32 and bf16; the transformers (swin3d_t, mvit_v2_s) also with
# --activation_checkpointing True. BENCH_ARCHS lists the architectures (default: all seven; about 10 more minutes on
# an H100); BENCH_ARCHS="" skips them. With BENCH_TINY=1 the architectures are not run unless BENCH_ARCHS names
# them, at 32³ (s3d and mvit_v2_s refuse 16³).
#
# Target for the record (issue 13): >= 150 volumes/s for training at 128^3 on one H200.
set -uo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python
OUT="${OUT:?set OUT to an output folder}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

ALL_ARCHS="r3d_18 mc3_18 r2plus1d_18 s3d swin3d_t mvit_v2_s resnet18_2d"
if [[ "${BENCH_TINY:-0}" == 1 ]]; then
    SIZE=16 BATCHES="2" TIMED=(--bench_warmup 1 --bench_steps 1 --bench_repeats 1) DEVICE=(--device cpu)
    LIMIT=300 ARCHS="${BENCH_ARCHS-}" ARCH_SIZE=32
else
    SIZE="${BENCH_SIZE:-128}" BATCHES="${BENCH_BATCHES:-2 8 32}"
    TIMED=(--bench_warmup 3 --bench_steps 4 --bench_repeats 3) DEVICE=() LIMIT=150
    ARCHS="${BENCH_ARCHS-$ALL_ARCHS}" ARCH_SIZE="$SIZE"
fi

run_one() {  # name, then extra CLI arguments
    local name="$1"
    shift
    local log="$OUT/$name.log"
    rm -f "$OUT/$name.json"
    (cd "$ROOT/bundle" && WANDB_MODE=disabled timeout "$LIMIT" "$PY" -m monai.bundle run benchmarking \
        --config_file "['configs/train.json','configs/benchmark.json']" --weights none --use_wandb False \
        --bench_size "${RUN_SIZE:-$SIZE}" "${TIMED[@]}" "${DEVICE[@]}" --output_dir "$OUT" --bench_output "$OUT/$name.json" "$@") \
        >"$log" 2>&1
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        if grep -qi "out of memory" "$log"; then status=OOM; elif [[ $rc -eq 124 ]]; then status=TIMEOUT; else status=FAILED; fi
        printf '{"name": "%s", "status": "%s", "exit_code": %d}\n' "$name" "$status" "$rc" >"$OUT/$name.json"
        echo "$name: $status (exit $rc, see $log)"
    else
        grep -A3 "^phase" "$log" | sed "s/^/$name  /"
    fi
}

START=$SECONDS
for trainable in ${BENCH_TRAINABLE:-layer4+fc all}; do
    for batch in $BATCHES; do
        run_one "r3d18_${trainable/+/_}_b${batch}_fp32" --trainable "$trainable" --bench_batch_size "$batch"
        run_one "r3d18_${trainable/+/_}_b${batch}_bf16" --trainable "$trainable" --bench_batch_size "$batch" \
            --bench_bf16 True
    done
done
if [[ "${BENCH_VARIANTS:-1}" == 1 ]]; then
    # Two variants of the largest batch, trainable all: NDHWC memory format, and cuDNN autotuning (training itself
    # runs deterministic cuDNN: MONAI's set_determinism turns autotuning off).
    LARGEST="${BATCHES##* }"
    run_one "r3d18_all_b${LARGEST}_bf16_channels_last" --trainable all --bench_batch_size "$LARGEST" --bench_bf16 True \
        --bench_channels_last True
    run_one "r3d18_all_b${LARGEST}_bf16_cudnn_benchmark" --trainable all --bench_batch_size "$LARGEST" --bench_bf16 True \
        --bench_cudnn_benchmark True
fi

RUN_SIZE="$ARCH_SIZE"
for arch in $ARCHS; do
    for trainable in ${BENCH_ARCH_TRAINABLE:-layer4+fc all}; do
        for batch in ${BENCH_ARCH_BATCHES:-2}; do
            base="arch_${arch}_${trainable/+/_}_b${batch}"
            common=(--arch "$arch" --trainable "$trainable" --bench_batch_size "$batch")
            run_one "${base}_fp32" "${common[@]}"
            run_one "${base}_bf16" "${common[@]}" --bench_bf16 True
            if [[ "$arch" == swin3d_t || "$arch" == mvit_v2_s ]]; then
                run_one "${base}_fp32_ckpt" "${common[@]}" --activation_checkpointing True
                run_one "${base}_bf16_ckpt" "${common[@]}" --bench_bf16 True --activation_checkpointing True
            fi
        done
    done
done

"$PY" - "$OUT" <<'PYEOF' | tee "$OUT/summary.txt"
import json, sys
from pathlib import Path

def cell(phase, key, fmt):
    if not isinstance(phase, dict) or phase.get("status") != "ok":
        return (phase or {}).get("status", "-").upper() if isinstance(phase, dict) else "-"
    return fmt.format(phase[key])

rows = []
for path in sorted(Path(sys.argv[1]).glob("r3d18_*.json")) + sorted(Path(sys.argv[1]).glob("arch_*.json")):
    r = json.loads(path.read_text())
    if "train" not in r:
        rows.append((path.stem, r.get("status", "?"), "", "", "", ""))
        continue
    options = ("bf16", "channels_last", "compile", "cudnn_benchmark", "activation_checkpointing")
    opts = "+".join(k for k in options if r.get(k)) or "fp32"
    rows.append((path.stem, f"{r['device_name']} {r['arch']} {r['size']}^3 b{r['batch_size']} {r['trainable']} {opts}",
                 cell(r["forward"], "vol_per_s", "{:.1f}"), cell(r["train"], "vol_per_s", "{:.1f}"),
                 cell(r["train"], "peak_mem_mib", "{:.0f}"), cell(r["train"], "s_per_step", "{:.3f}")))
print(f"{'configuration':<40} {'forward vol/s':>13} {'train vol/s':>11} {'train peak MiB':>14} {'train s/step':>12}")
for name, what, fwd, train, mem, step in rows:
    print(f"{name:<40} {fwd:>13} {train:>11} {mem:>14} {step:>12}   {what}")
PYEOF
echo "finished in $((SECONDS - START)) s; JSON files, logs and summary.txt in $OUT"
