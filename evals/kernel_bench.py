"""Microbenchmark of the CuPy logit kernels against their torch reference, and a decoding-step comparison.

``python -m decoding.evals.kernel_bench`` needs a CUDA GPU and CuPy; without them it says so and exits with
status 2. What it measures: ``docs/BENCHMARKS.md``, "Other benchmarks".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

NO_GPU = ("kernel_bench needs a CUDA GPU and CuPy (pip install 'pairdecode[cuda]'); {reason}. "
          "Nothing was measured.")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m decoding.evals.kernel_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32, help="rows B (default 32)")
    parser.add_argument("--draft", type=int, default=5, help="draft tokens g of verification (default 5)")
    parser.add_argument("--vocab", type=int, default=131072, help="vocabulary V (default 131072)")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated of fp32, bf16, fp16 (default fp32,bf16)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    parser.add_argument("--kernels", choices=["auto", "torch", "cupy"], default="auto",
                        help="implementations to time: cupy (kernels), torch (reference) or auto (both)")
    parser.add_argument("--e2e", action="store_true", help="also time decoding steps end to end (synthetic pair)")
    parser.add_argument("--json", type=Path, default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    unknown = [d for d in args.dtypes.split(",") if d not in DTYPES]
    if unknown:
        parser.error(f"--dtypes: unknown {unknown}; choose from {sorted(DTYPES)}")
    if min(args.batch, args.draft, args.vocab, args.repeats) < 1:
        parser.error("--batch, --draft, --vocab and --repeats must be >= 1")
    return args


def gpu_unavailable_reason() -> str | None:
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    from decoding.kernels import dispatch

    ok, reason = dispatch.cupy_status()
    return None if ok else reason


def cuda_time(fn, repeats: int, warmup: int) -> float:
    """Median seconds of ``fn()`` by CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth(repeats: int, warmup: int, nbytes: int = 1 << 30) -> float:
    """Bytes per second of a device-to-device ``copy_`` (read + write counted)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    seconds = cuda_time(lambda: dst.copy_(src), repeats, warmup)
    return 2 * nbytes / seconds


def bytes_moved(op: str, batch: int, g: int, vocab: int, itemsize: int) -> int:
    """Bytes an operation must move at least: inputs read once, outputs written once."""
    logits = batch * (g + 1) * vocab * itemsize
    return {
        "verify_greedy": logits,
        "verify_sample": logits + batch * g * vocab * 4,
        "sample_logits": batch * vocab * itemsize + batch * vocab * 4,
        "contrastive_scores": 2 * batch * vocab * itemsize + batch * vocab * 4,
        "contrastive_choose": 2 * batch * vocab * itemsize,
    }[op]


def _ops(batch: int, g: int, vocab: int, dtype: torch.dtype):
    """``{name: (op kind, kernel call, reference call, general-path call or None)}`` on fresh CUDA inputs."""
    from decoding.kernels import cupy_backend, reference

    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = (torch.randn(batch, g + 1, vocab, device="cuda", generator=gen) * 3).to(dtype)
    q = torch.softmax(torch.randn(batch, g, vocab, device="cuda", generator=gen), -1)
    drafts = torch.randint(0, vocab, (batch, g), device="cuda", generator=gen)
    u = torch.rand(batch, g + 1, device="cuda", generator=gen, dtype=torch.float64)
    expert, amateur = logits[:, 0].contiguous(), logits[:, 1].contiguous()
    topkp = dict(temperature=0.8, top_k=50, top_p=0.9)
    cd = dict(alpha=0.1, beta=0.5)

    def general(**kw):
        return lambda: reference.verify_sampling(reference.probabilities(reference.scaled_scores(logits, kw["temperature"])),
                                                 q, drafts, u[:, :g], u[:, g])

    return {
        "verify_greedy": ("verify_greedy", lambda: cupy_backend.verify(logits, drafts),
                          lambda: reference.verify(logits, drafts), lambda: reference.verify_greedy(logits.float(), drafts)),
        "verify_sample_t0.8": ("verify_sample", lambda: cupy_backend.verify(logits, drafts, q, u, temperature=0.8),
                               lambda: reference.verify(logits, drafts, q, u, temperature=0.8), general(temperature=0.8)),
        "verify_sample_topk50_topp0.9": ("verify_sample", lambda: cupy_backend.verify(logits, drafts, q, u, **topkp),
                                         lambda: reference.verify(logits, drafts, q, u, **topkp), None),
        "sample_logits_t0.8": ("sample_logits", lambda: cupy_backend.sample_logits(expert, u[:, 0], temperature=0.8),
                               lambda: reference.sample_logits(expert, u[:, 0], temperature=0.8), None),
        "contrastive_scores": ("contrastive_scores", lambda: cupy_backend.contrastive_scores(expert, amateur, **cd),
                               lambda: reference.contrastive_scores(expert, amateur, **cd), None),
        "contrastive_greedy": ("contrastive_choose", lambda: cupy_backend.contrastive_choose(expert, amateur, **cd),
                               lambda: reference.contrastive_choose(expert, amateur, **cd), None),
        "contrastive_sample_t0.8": ("contrastive_choose",
                                    lambda: cupy_backend.contrastive_choose(expert, amateur, u[:, 0], temperature=0.8, **cd),
                                    lambda: reference.contrastive_choose(expert, amateur, u[:, 0], temperature=0.8, **cd),
                                    None),
    }


def measure_kernels(args, bandwidth: float) -> list[dict]:
    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = DTYPES[dtype_name]
        for name, (op, kernel, ref, general) in _ops(args.batch, args.draft, args.vocab, dtype).items():
            batch_g = args.draft if op.startswith("verify") else 0
            nbytes = bytes_moved(op, args.batch, batch_g, args.vocab, torch.tensor([], dtype=dtype).element_size())
            row = {"op": name, "dtype": dtype_name, "bytes": nbytes}
            if args.kernels in ("auto", "cupy"):
                row["kernel_s"] = cuda_time(kernel, args.repeats, args.warmup)
                row["bandwidth_fraction"] = nbytes / row["kernel_s"] / bandwidth
            if args.kernels in ("auto", "torch"):
                row["reference_s"] = cuda_time(ref, args.repeats, args.warmup)
                if general is not None:
                    row["general_path_s"] = cuda_time(general, args.repeats, args.warmup)
            if "kernel_s" in row and "reference_s" in row:
                row["speedup_over_reference"] = row["reference_s"] / row["kernel_s"]
            rows.append(row)
    return rows


def measure_e2e(args) -> list[dict]:
    """Seconds per decoding step (per row-step) of sampled speculative decoding, kernels vs reference."""
    import decoding
    from decoding.kernels import ops as kernels
    from decoding.model_pairs.synthetic import damped_pair

    target, draft = damped_pair(vocab_size=32768, device="cuda", dtype=torch.bfloat16)
    decoding.enable(target)
    out = []
    for batch in (1, 8):
        ids = torch.randint(10, 32000, (batch, 32), device="cuda")
        for backend in ([b for b in ("cupy", "torch") if args.kernels in ("auto", b)]):
            strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=4)
            times = []
            for _ in range(3):
                torch.manual_seed(0)
                torch.cuda.synchronize()
                start = time.perf_counter()
                with kernels.use_backend(backend), torch.no_grad():
                    target.generate(ids, max_new_tokens=128, strategy=strategy, do_sample=True, temperature=0.8,
                                    top_k=50, top_p=0.9)
                torch.cuda.synchronize()
                times.append((time.perf_counter() - start) / max(strategy.stats.steps / batch, 1))
            out.append({"batch": batch, "backend": backend, "step_s": statistics.median(times[1:]),
                        "mean_accepted_length": strategy.stats.mean_accepted_length})
    return out


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'op':32} {'dtype':5} {'MB':>8} {'kernel us':>10} {'ref us':>10} {'general us':>10} {'speedup':>8} {'BW frac':>8}"]
    for r in rows:
        def us(key):
            return f"{r[key] * 1e6:10.1f}" if key in r else f"{'-':>10}"
        speed = f"{r['speedup_over_reference']:8.1f}" if "speedup_over_reference" in r else f"{'-':>8}"
        frac = f"{r['bandwidth_fraction']:8.2f}" if "bandwidth_fraction" in r else f"{'-':>8}"
        lines.append(f"{r['op']:32} {r['dtype']:5} {r['bytes'] / 1e6:8.1f} {us('kernel_s')} {us('reference_s')} "
                     f"{us('general_path_s')} {speed} {frac}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(NO_GPU.format(reason=reason), file=sys.stderr)
        return 2
    bandwidth = copy_bandwidth(max(args.repeats // 5, 5), 2)
    print(f"device: {torch.cuda.get_device_name()}; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    result = {"device": torch.cuda.get_device_name(), "copy_bandwidth_Bps": bandwidth, "batch": args.batch,
              "draft": args.draft, "vocab": args.vocab, "kernels": measure_kernels(args, bandwidth)}
    print(format_rows(result["kernels"]))
    if args.e2e:
        result["e2e"] = measure_e2e(args)
        for row in result["e2e"]:
            print(f"e2e batch {row['batch']} {row['backend']:5}: {row['step_s'] * 1e3:.2f} ms per step, "
                  f"tau {row['mean_accepted_length']:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
