#!/usr/bin/env bash
# The GPU checks of shared/GPU.md in one device call, in priority order, each step time-boxed so that a slow
# step cannot eat the next one. Logs and JSON go to $OUT (the device tool's folder; /tmp/gpu-checks elsewhere).
#   COMMIT=$(git rev-parse --short HEAD) bash evals/gpu_checks.sh [steps...]
# Steps: env tests kernel_bench bench_embedded bench_synthetic bench_static bench_static_spec (default: all, about
# 19 minutes: two or three device calls), the group "static" = env bench_static_spec (our loop with cache='static',
# eager and compiled, beside the eager one at batch 8: compiling takes minutes), and the group "overhead" = env bench_synthetic bench_static (issue 28, shared/GPU.md item 1: the
# 8B-shaped pair at batch 1/8/32, greedy and sampling, kernels on and off, with --step-split, then the
# static-cache compiled target at batch 8/32; boxes of 170 + 170 + 220 s, one 10-minute call). Carried wheels in
# .whl/ (for example the transformers version CI uses) are installed into /tmp/site first.
set -u
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="$PWD:/tmp/site"
fi
# The checkout maps kernels/, model_pairs/ and evals/ into the decoding package through pyproject.toml: install it
# (editable, offline, with the machine's own setuptools) so that decoding.kernels and the others import.
python3 -m pip install -q --no-deps --no-build-isolation -e . || exit 1
steps=${*:-env tests kernel_bench bench_embedded bench_synthetic bench_static bench_static_spec}
expanded=""
for step in $steps; do  # the groups
    case $step in
    overhead) expanded+=" env bench_synthetic bench_static" ;;
    static) expanded+=" env bench_static_spec" ;;
    *) expanded+=" $step" ;;
    esac
done
steps=$expanded
# Llama-3-8B's shape: 32 layers, width 4096, MLP 14336, 32 heads, 8 KV heads, vocabulary 128256.
LLAMA8B=layers=32,hidden=4096,intermediate=14336,heads=32,kv_heads=8,vocab=128256
# The 8B-shaped grid: 32 new tokens (64 ran past 100 s boxes on 2026-11-29 without the split), one round.
LLAMA8B_GRID=(--synthetic "$LLAMA8B" --dtype bfloat16 --draft-lengths 4 --max-new-tokens 32 --no-assisted --quiet
              --cost-repeats 11)

run() {  # run NAME SECONDS CMD...: time-boxed, output teed to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | tail -n 40
    echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start))s"
}

for step in $steps; do
    case $step in
    env)
        { echo "commit ${COMMIT:-unknown}; date $(date -u +%FT%TZ)"
          nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
          python3 -c "import sys, torch, transformers, cupy; print('python', sys.version.split()[0], '| torch', torch.__version__, '| transformers', transformers.__version__, '| cupy', cupy.__version__, '| cuda', torch.version.cuda)"
        } 2>&1 | tee "$OUT/env.txt" ;;
    tests)
        run pytest_gpu 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_kernels_gpu.py -rA ;;
    kernel_bench)
        run kernel_bench 90 python3 -m decoding.evals.kernel_bench --e2e --json "$OUT/kernel_bench.json" ;;
    bench_embedded)
        run bench_embedded 60 python3 -m decoding.evals.bench --batch-sizes 1,8,32 --draft-lengths 3,5 --kernels cupy \
            --quiet --json "$OUT/bench_embedded.json" ;;
    bench_synthetic)  # kernels on (cupy) and off (torch): speedup, ceiling, and per step the time split and host reads
        for backend in cupy torch; do
            run "bench_llama8b_$backend" 170 python3 -m decoding.evals.bench "${LLAMA8B_GRID[@]}" --batch-sizes 1,8,32 \
                --kernels "$backend" --step-split --json "$OUT/bench_llama8b_$backend.json"
        done ;;
    bench_static)  # transformers' fastest target alone (static cache, compiled forward) beside the eager one, at the
        # batch sizes of issue 28: one compilation serves both (torch specializes a batch of 1: a second one)
        run bench_llama8b_static 220 python3 -m decoding.evals.bench "${LLAMA8B_GRID[@]}" --batch-sizes 8,32 \
            --kernels auto --variants static-target --json "$OUT/bench_llama8b_static.json" ;;
    bench_static_spec)  # issue 28 item 3: SpeculativeDecoding(cache='static'), eager and with compiled forwards
        # (mode='reduce-overhead': CUDA graphs), beside the dynamic cache, greedy and sampling at batch 8
        run bench_llama8b_static_spec 240 python3 -m decoding.evals.bench "${LLAMA8B_GRID[@]}" --batch-sizes 8 \
            --kernels auto --variants static,static-compiled --step-split --json "$OUT/bench_llama8b_static_spec.json" ;;
    *) echo "unknown step $step"; exit 2 ;;
    esac
done
