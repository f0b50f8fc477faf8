"""The kernel microbenchmark's CPU-checkable parts: arguments, the no-GPU message and exit status, byte
counts and the table (the measurements themselves need a GPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from decoding.evals import kernel_bench


def test_defaults_are_the_goal_shapes():
    args = kernel_bench.parse_args([])
    assert (args.batch, args.draft, args.vocab, args.dtypes, args.kernels) == (32, 5, 131072, "fp32,bf16", "auto")
    assert args.json is None and not args.e2e


def test_arguments_are_checked(capsys):
    with pytest.raises(SystemExit):
        kernel_bench.parse_args(["--dtypes", "fp8"])
    assert "unknown ['fp8']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kernel_bench.parse_args(["--kernels", "triton"])
    with pytest.raises(SystemExit):
        kernel_bench.parse_args(["--batch", "0"])
    args = kernel_bench.parse_args(["--kernels", "cupy", "--json", "out.json", "--e2e", "--dtypes", "bf16,fp16"])
    assert args.kernels == "cupy" and args.e2e and str(args.json) == "out.json"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_without_a_gpu_it_says_so_and_exits_nonzero(tmp_path):
    out = tmp_path / "r.json"
    result = subprocess.run([sys.executable, "-m", "decoding.evals.kernel_bench", "--json", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "Nothing was measured" in result.stderr
    assert not out.exists()


def test_bytes_moved_and_table():
    assert kernel_bench.bytes_moved("verify_sample", 32, 5, 131072, 4) == 32 * 6 * 131072 * 4 + 32 * 5 * 131072 * 4
    assert kernel_bench.bytes_moved("contrastive_scores", 32, 0, 131072, 2) == 32 * 131072 * (2 * 2 + 4)
    rows = [{"op": "verify_sample_t0.8", "dtype": "bf16", "bytes": 2e8, "kernel_s": 1e-4, "reference_s": 1e-3,
             "speedup_over_reference": 10.0, "bandwidth_fraction": 0.66}]
    table = kernel_bench.format_rows(rows)
    assert "verify_sample_t0.8" in table and "10.0" in table and "0.66" in table
