#!/usr/bin/env bash
# The SmolLM2 draft distilled on one GPU: teacher data made there by the target (greedy and sampled answers to the
# training prompts, scored standard-library windows), then the four divergences at equal budget on the mixed data
# and two on on-policy data alone, all trained at once on the one GPU, each scored on the held-out continuations.
#   bash model_pairs/smollm2/train_gpu.sh GGUF HELDOUT WORK      (HELDOUT: `distill heldout`'s file, made on a CPU)
# Knobs (environment): STEPS, BATCH (trained positions per step), TIME_LIMIT (seconds per run), NEW (new tokens per
# answer), WINDOWS (corpus windows), GEN_BATCH, LIMIT (first prompts only: quick runs), DEVICE (default cuda).
set -u
GGUF=$1 HELDOUT=$2 WORK=$3
STEPS=${STEPS:-1500} BATCH=${BATCH:-8192} TIME_LIMIT=${TIME_LIMIT:-210} NEW=${NEW:-128} WINDOWS=${WINDOWS:-4000}
GEN_BATCH=${GEN_BATCH:-256} DEVICE=${DEVICE:-cuda}
M="python3 -m decoding.model_pairs"
LIMIT_ARG=${LIMIT:+--limit $LIMIT}
mkdir -p "$WORK/runs"
log() { echo "[$(date -u +%T)] $*"; }

log "converting $GGUF"
python3 -c "import sys; from decoding.model_pairs.gguf import convert_gguf; print(convert_gguf(sys.argv[1]))" "$GGUF" || exit 1
teacher() { $M.distill.teacher --target "$GGUF" --device "$DEVICE" --max-new-tokens "$NEW" "$@"; }
log "teacher data"
teacher --kind on-policy --batch-size "$GEN_BATCH" $LIMIT_ARG --out "$WORK/t-greedy.pt" > "$WORK/t-greedy.log" 2>&1 &
for seed in 1 2 3; do
    teacher --kind on-policy --batch-size "$GEN_BATCH" $LIMIT_ARG --temperature 0.7 --seed $seed \
        --out "$WORK/t-t07-$seed.pt" > "$WORK/t-t07-$seed.log" 2>&1 &
done
for seed in 4 5; do
    teacher --kind on-policy --batch-size "$GEN_BATCH" $LIMIT_ARG --temperature 1.0 --seed $seed \
        --out "$WORK/t-t10-$seed.pt" > "$WORK/t-t10-$seed.log" 2>&1 &
done
teacher --kind corpus --windows "$WINDOWS" --batch-size "$GEN_BATCH" --out "$WORK/t-corpus.pt" > "$WORK/t-corpus.log" 2>&1 &
wait
tail -n 2 "$WORK"/t-*.log
ONPOLICY="$WORK/t-greedy.pt:2,$WORK/t-t07-1.pt:1,$WORK/t-t07-2.pt:1,$WORK/t-t07-3.pt:1,$WORK/t-t10-4.pt:1,$WORK/t-t10-5.pt:1"
# Corpus records are 255-position windows against ~100 on-policy positions: weight 0.1 gives corpus about a
# quarter of the trained positions.
MIX="$ONPOLICY,$WORK/t-corpus.pt:0.1"

train() {  # train NAME DIVERGENCE DATA
    $M.distill train --target "$GGUF" --data "$3" --divergence "$2" --steps "$STEPS" --batch-tokens "$BATCH" \
        --warmup 100 --device "$DEVICE" --time-limit "$TIME_LIMIT" --heldout "$HELDOUT" --out "$WORK/runs/$1" \
        > "$WORK/runs/$1.log" 2>&1
}
log "training"
for div in fkl rkl tv js; do train "$div-mix" "$div" "$MIX" & done
train tv-onpolicy tv "$ONPOLICY" &
train fkl-onpolicy fkl "$ONPOLICY" &
wait
log "done"
for run in "$WORK"/runs/*/record.json; do
    python3 -c "import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[1], r['train']['steps'], \
r['train']['wall_s'], r['heldout']['alpha'])" "$run"
done
