#!/usr/bin/env bash
# The whole pipeline on a synthetic ADNI-like cohort, through the same command lines a user runs on real data:
# generate the cohort (DICOM + collection CSV), convert and preprocess it (the full per-volume chain, deepbet as the
# offline skull stripper), balance and split it by subject, train and evaluate the bundle, and write the report.
#
# `make demo` runs it with the defaults below; every setting can be changed through the environment, e.g.
#   DEMO_SUBJECTS=60 DEMO_EPOCHS=12 make demo
# Run it again to resume: finished scans, a finished training run and a finished evaluation are not redone.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$(mkdir -p "${DEMO_OUT:-$ROOT/demo}" && cd "${DEMO_OUT:-$ROOT/demo}" && pwd)"
SUBJECTS="${DEMO_SUBJECTS:-160}"         # synthetic subjects (half AD)
MAX_VISITS="${DEMO_MAX_VISITS:-1}"       # visits per subject at most (1-4; more subjects teach more than more visits)
VOXEL_SIZE="${DEMO_VOXEL_SIZE:-2.0 2.5}" # acquisition voxel sizes (mm), drawn per subject (generator default 1.0 1.25)
ATROPHY="${DEMO_ATROPHY:-0.35}"          # AD hippocampal volume loss at the first visit (generator default 0.18)
VENTRICLE_RATIO="${DEMO_VENTRICLE_RATIO:-3.0}" # AD ventricular growth per unit of it: about 2x (generator default 1.7)
SPACING="${DEMO_SPACING:-2.0}"           # resampling before the crop, mm (the paper's is 1.0)
SIZE="${DEMO_SIZE:-32}"                  # model input size (the paper's is 128)
EPOCHS="${DEMO_EPOCHS:-15}"              # training epochs: three cosine cycles of 5 (T_0 of the recipe)
PATIENCE="${DEMO_PATIENCE:-10}"          # early-stopping patience in epochs (the paper's is 5)
FRACTIONS="${DEMO_FRACTIONS:-0.6 0.15 0.25}" # train/val/test shares (the paper: 0.8 0.1 0.1; more test subjects here)
SEED="${DEMO_SEED:-0}"
WORKERS="${DEMO_WORKERS:-$(nproc)}"
EXPLAIN_METHODS="${DEMO_EXPLAIN_METHODS:-gradcam gradcampp occlusion integrated_gradients}" # saliency methods
RANDOMISATION="${DEMO_RANDOMISATION_SCANS:-2}" # test scans in the cascading-randomisation check
OCCLUSION_SCANS="${DEMO_OCCLUSION_SCANS:-2}"   # test scans that get occlusion maps (64 forward passes each)

STEP_NAMES=() STEP_SECONDS=() STEP_STARTED=$SECONDS
# Each step's wall time, printed as a table at the end (a resumed step shows the seconds it took to skip).
say() {
    if ((${#STEP_NAMES[@]})); then STEP_SECONDS+=($((SECONDS - STEP_STARTED))); fi
    STEP_STARTED=$SECONDS
    STEP_NAMES+=("$(cut -d' ' -f2- <<<"$1" | cut -d':' -f1 | cut -c1-40)")
    printf '\n== %s\n' "$*"
}
START=$SECONDS

say "1/7 Synthetic cohort: $SUBJECTS subjects, up to $MAX_VISITS visits, voxels $VOXEL_SIZE mm, AD hippocampal loss $ATROPHY and ventricular growth $VENTRICLE_RATIO times that (stronger than typical AD, to learn from few subjects) -> $OUT/cohort"
if [[ -f "$OUT/cohort/truth/cohort.json" ]]; then
    echo "already there (delete $OUT to start over)"
else
    # shellcheck disable=SC2086  # VOXEL_SIZE is two numbers
    "$PY" -m preprocessing synth --out "$OUT/cohort" --subjects "$SUBJECTS" --max-visits "$MAX_VISITS" \
        --voxel-size $VOXEL_SIZE --atrophy "$ATROPHY" --ventricle-ratio "$VENTRICLE_RATIO" --seed "$SEED" \
        --workers "$WORKERS" --overwrite
fi

say "2/7 Conversion and the per-volume chain: deepbet skull stripping; $SPACING mm and ${SIZE}^3 (the paper: 1 mm, 128^3) for CPU time"
"$PY" -m preprocessing run --adni "$OUT/cohort/ADNI" --collection-csv "$OUT/cohort/collection.csv" \
    --out "$OUT/data" --skull-stripper deepbet --spacing "$SPACING" --spatial-size "$SIZE" --workers "$WORKERS"

say "3/7 Balanced cohort and subject-level split ($FRACTIONS)"
# shellcheck disable=SC2086  # FRACTIONS is three numbers
"$PY" -m preprocessing split --out "$OUT/data" --seed "$SEED" --fractions $FRACTIONS

# Kinetics-400 weights when the torch hub cache has them (a user's machine that was online once); otherwise random
# initialisation, and then every layer trains: frozen random filters would carry no pretrained knowledge.
KINETICS="$(cd "$ROOT/bundle" && "$PY" -c 'from scripts.network import kinetics_checkpoint_path as k; print(k())')"
if [[ -f "$KINETICS" ]]; then
    WEIGHTS=kinetics400 TRAINABLE=layer4+fc
    NOTE="Kinetics-400 weights found ($KINETICS): stem..layer3 frozen, as in the dissertation"
else
    WEIGHTS=none TRAINABLE=all
    NOTE="note: no Kinetics-400 weights in the torch hub cache ($KINETICS), so the network starts from random weights and every layer trains (see README: supplying the Kinetics weights offline)"
fi
say "4/7 Training: ${SIZE}^3 volumes, at most $EPOCHS epochs, patience $PATIENCE. $NOTE"
cd "$ROOT/bundle"
if [[ -f "$OUT/models/.demo_finished" ]]; then
    echo "already trained ($OUT/models/model.pt; delete $OUT/models to train again)"
else
    # An interrupted training resumes from its last per-epoch checkpoint (the bundle's own resume).
    "$PY" -m monai.bundle run training --config_file configs/train.json \
        --dataset_dir "$OUT/data" --ckpt_dir "$OUT/models" --output_dir "$OUT/eval" \
        --weights "$WEIGHTS" --trainable "$TRAINABLE" --train#trainer#max_epochs "$EPOCHS" --patience "$PATIENCE" --seed "$SEED" \
        --num_workers 0 --cache_rate 1.0 --use_wandb False
    touch "$OUT/models/.demo_finished"
fi

say "5/7 Evaluation of the best-accuracy model on the held-out test subjects"
if [[ "$OUT/eval/metrics.json" -nt "$OUT/models/.demo_finished" ]]; then
    echo "already evaluated ($OUT/eval/metrics.json)"
else
    "$PY" -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']" \
        --dataset_dir "$OUT/data" --ckpt_dir "$OUT/models" --output_dir "$OUT/eval" --weights none \
        --num_workers 0 --use_wandb False
fi
cd "$ROOT"

say "6/7 Explanations of the test scans ($EXPLAIN_METHODS), measured against the planted atrophy"
if [[ "$OUT/explain/summary.json" -nt "$OUT/models/.demo_finished" ]]; then
    echo "already explained ($OUT/explain/summary.json; delete it to explain again):"
    "$PY" -c 'import sys; from analysis.explain.summary import read_summary, summary_text as t
print(t(read_summary(sys.argv[1])))' "$OUT/explain"
else
    # shellcheck disable=SC2086  # EXPLAIN_METHODS is a list
    "$PY" -m analysis explain --model-dir "$OUT/models" --datalist "$OUT/data/datalist.json" --partition test \
        --truth-dir "$OUT/cohort/truth" --out "$OUT/explain" --methods $EXPLAIN_METHODS \
        --randomisation-scans "$RANDOMISATION" --randomisation-methods gradcam gradcampp integrated_gradients \
        --occlusion-scans "$OCCLUSION_SCANS" --ig-steps 4 --figure-scans 1 --no-native --seed "$SEED"
fi

say "7/7 Report"
"$PY" -m analysis report --eval-dir "$OUT/eval" --datalist "$OUT/data/datalist.json" --out "$OUT/report" --synthetic \
    --explain-dir "$OUT/explain"

"$PY" - "$OUT/eval/metrics.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
print("\nTest metrics (synthetic held-out subjects, per scan):")
for key in ("n", "accuracy", "balanced_accuracy", "sensitivity", "specificity", "f1", "roc_auc"):
    if key in m:
        value = m[key]
        print(f"  {key:18s} {value:.3f}" if isinstance(value, float) else f"  {key:18s} {value}")
EOF
STEP_SECONDS+=($((SECONDS - STEP_STARTED)))
printf '\nTime per step:\n'
for i in "${!STEP_NAMES[@]}"; do
    printf '  %d/7 %-42s %3d min %02d s\n' $((i + 1)) "${STEP_NAMES[$i]}" $((STEP_SECONDS[i] / 60)) $((STEP_SECONDS[i] % 60))
done
cat <<EOF

Demo finished in $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s. Everything is under $OUT:
  cohort/        the synthetic ADNI download (DICOM, collection.csv) and its ground truth (truth/)
  data/          preprocessed ${SIZE}^3 volumes, manifest.csv, qc/index.html, datalist.json
  models/        model.pt (best validation accuracy), best_loss_model.pt, per-epoch checkpoints
  eval/          metrics.json, predictions.csv
  explain/       relevance maps (NIfTI, model and native grids), figures, per_scan.csv, summary.json
  report/        report.html and its figures
Synthetic data, research use only: these numbers say the pipeline works, not how well it diagnoses people.
EOF
