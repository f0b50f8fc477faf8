"""The embedded pair's ``eval`` stage: on held-out files, greedy at batch 1 on the CPU, the acceptance of
speculative decoding (g = 4, and whether its output equals the target's own) and a short speedup measurement
against the target alone (:func:`evaluate_pair`)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .loop import load_model, log_message
from .presets import Preset

__all__ = ["evaluate_pair"]


@torch.no_grad()
def evaluate_pair(out: Path, preset: Preset, corpus, seed: int) -> dict:
    """Acceptance (g=4) and a short speedup measurement on held-out files, greedy, batch 1, CPU float32."""
    import decoding
    from transformers import AutoTokenizer

    device = torch.device("cpu")
    target, draft = load_model(out / "target", device), load_model(out / "draft", device)
    tokenizer = AutoTokenizer.from_pretrained(out / "target")
    decoding.enable(target)
    min_len = preset.prompt_tokens + preset.new_tokens
    prompts = []
    for path, text in corpus.held_out:
        ids = tokenizer.backend_tokenizer.encode(text).ids
        if len(ids) >= min_len:
            prompts.append((path, torch.tensor([ids[: preset.prompt_tokens]])))
    prompts = prompts[: preset.eval_prompts]

    def run(ids, g=None):
        mask = torch.ones_like(ids)
        kwargs = dict(attention_mask=mask, max_new_tokens=preset.new_tokens, do_sample=False,
                      min_new_tokens=preset.new_tokens)
        if g is None:
            return target.generate(ids, **kwargs), None
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
        return target.generate(ids, strategy=strategy, **kwargs), strategy.stats

    accepted = drafted = tests = steps = 0
    same = True
    for _, ids in prompts:
        plain, _ = run(ids)
        spec, stats = run(ids, 4)
        same &= torch.equal(plain, spec)
        accepted += stats.accepted
        drafted += stats.drafted
        tests += stats.accepted + stats.rejected
        steps += stats.steps
    result = {
        "prompts": len(prompts), "prompt_tokens": preset.prompt_tokens, "new_tokens": preset.new_tokens,
        "prompt_files": [p for p, _ in prompts], "g": 4,
        "alpha": round(accepted / max(tests, 1), 4), "acceptance_rate": round(accepted / max(drafted, 1), 4),
        "mean_accepted_length": round(1 + accepted / max(steps, 1), 4), "greedy_outputs_identical": bool(same),
    }
    log_message(f"eval: {result}")
    # Speed: interleaved runs, target alone vs speculative at several draft lengths, one warm-up each.
    speed_prompts = prompts[: preset.speed_prompts]
    if speed_prompts:
        run(speed_prompts[0][1])
        for g in preset.speed_draft_lengths:
            run(speed_prompts[0][1], g)
        times = {"target": 0.0, **{g: 0.0 for g in preset.speed_draft_lengths}}
        for _, ids in speed_prompts:
            for key in times:
                start = time.perf_counter()
                run(ids, None if key == "target" else key)
                times[key] += time.perf_counter() - start
        tokens = len(speed_prompts) * preset.new_tokens
        result["speed"] = {
            "target_tokens_per_s": round(tokens / times["target"], 2),
            "speedup_by_g": {str(g): round(times["target"] / times[g], 3) for g in preset.speed_draft_lengths},
            "threads": torch.get_num_threads(),
        }
        log_message(f"speed: {result['speed']}")
    return result
