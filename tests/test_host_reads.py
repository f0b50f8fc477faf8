"""Counting host reads and operations (``decoding.evals.common.host_reads``, ``python -m decoding.evals.overhead``):
each kind of read is seen once per read, other operations are not reads, and a model forward with a cache reads
nothing."""

from __future__ import annotations

import torch

from decoding import hf_compat
from decoding.evals import overhead
from decoding.evals.common.host_reads import OpCounter
from models import tiny_model


def test_each_kind_of_host_read_is_counted_once():
    x = torch.arange(6)
    with OpCounter() as counter:
        x.sum().item()
        bool((x > 2).any())
        int(x.max())
        x[x > 2]
        (x > 2).nonzero()
        torch.masked_select(x, x > 3)
        x[torch.tensor([0, 2])]  # integer indexing: no read
        x * 2 + 1
    assert dict(counter.reads) == {"item": 3, "bool_index": 1, "nonzero": 1, "masked_select": 1}
    assert counter.host_reads == 6 and counter.ops > counter.host_reads


def test_one_token_forwards_with_a_cache_read_nothing():
    model = tiny_model("llama")
    cache = hf_compat.new_cache(model)
    with torch.no_grad():
        hf_compat.forward_with_cache(model, cache, input_ids=torch.tensor([[5, 9, 14]]), use_cache=True)
        with OpCounter() as counter:
            for token in (3, 7, 11, 4, 8):
                hf_compat.forward_with_cache(model, cache, input_ids=torch.tensor([[token]]), use_cache=True)
    assert counter.host_reads == 0 and counter.ops > 0


def test_the_overhead_command_reports_both_methods(capsys):
    assert overhead.main(["--batch-sizes", "1,2", "--new-tokens", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all("host reads/step" in line for line in lines)
    assert "target alone" in lines[0] and "speculative g=4" in lines[1]
