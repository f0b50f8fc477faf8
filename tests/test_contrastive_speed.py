"""``python -m decoding.evals.contrastive_speed``: the timed grid on a tiny pair, and its derived ratios."""

from __future__ import annotations

import pytest
import torch

from decoding.evals import contrastive_speed
from decoding.evals.common.batches import make_batches

from models import tiny_pair


@pytest.mark.parametrize("batch_size", [1, 3])
def test_every_method_is_timed_and_scd_output_equals_cd(batch_size):
    expert, amateur = tiny_pair("llama", draft_kind="noisy_copy", noise=0.05)
    generator = torch.Generator().manual_seed(batch_size)
    prompts = [torch.randint(1, 50, (n,), generator=generator) for n in (5, 9, 7)]
    batches = make_batches(prompts, batch_size, expert.device)
    result = contrastive_speed.measure_batches(expert, amateur, batches, new_tokens=6, alpha=0.1, beta=0.5,
                                               draft_lengths=[1, 3], rounds=2)
    assert set(result["seconds_per_token"]) == {"expert", "amateur", "cd", "scd g=1", "scd g=3"}
    assert all(s > 0 for s in result["seconds_per_token"].values())
    t = result["seconds_per_token"]
    assert result["cd_overhead"] == pytest.approx(t["cd"] / (t["expert"] + t["amateur"]))
    for g, scd in result["scd"].items():
        assert scd["equals_cd"], f"SCD g={g} differs from CD"
        assert scd["speedup_over_cd"] == pytest.approx(t["cd"] / t[f"scd g={g}"])
        assert 1 <= scd["mean_accepted_length"] <= g + 1
        assert 0 <= scd["acceptance_rate"] <= 1
    assert result["best_g"] == max(result["scd"], key=lambda g: result["scd"][g]["speedup_over_cd"])


def test_parser_defaults_name_the_embedded_pair_and_a_draft_length_grid():
    args = contrastive_speed.build_parser().parse_args([])
    assert args.target == "embedded" and args.draft_lengths == "2,3,4" and args.batch_sizes == "1,8"
