"""Training EAGLE-3 heads (``decoding.model_pairs.heads``): the training-time-test attention is exactly the attention
of drafting with a cache, the loss trains a head towards its target (held-out acceptance rises on a tiny target),
and the command trains, evaluates, saves in the published layout and resumes."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
import torch

from decoding.model_pairs.eagle import load_head, save_head
from decoding.model_pairs.heads import cli
from decoding.model_pairs.heads.train import Batch, batch_of, draft_vocabulary, evaluate, new_head, revocabulary, \
    target_pass, training_step, ttt_losses
from hypothesis import given, settings, strategies as st
from decoding.ragged_cache import RaggedCache
from models import save_llama, tiny_model, word_tokenizer


def target():
    return tiny_model("llama", vocab_size=96, num_layers=4).to(torch.float64)


def records(model, count: int = 24, length: int = 20, seed: int = 0) -> list[dict]:
    """The target's own greedy continuations of random prompts: what the head learns to predict."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        prompt = torch.randint(3, model.config.vocab_size, (1, 4), generator=generator)
        ids = model.generate(prompt, max_new_tokens=length, do_sample=False, pad_token_id=0)[0]
        out.append({"ids": ids, "start": 4})
    return out


def test_the_draft_vocabulary_is_the_most_frequent_answer_tokens_ascending():
    data = [{"ids": torch.tensor([1, 1, 1, 5, 5, 7, 9, 9, 9]), "start": 3}]  # answers: 5 5 7 9 9 9
    assert draft_vocabulary(data, 2, 12).tolist() == [5, 9]
    assert draft_vocabulary(data, 5, 12).tolist() == [0, 1, 5, 7, 9]  # then the lowest unused ids


def test_a_ttt_step_attends_as_drafting_with_a_cache_does():
    """Step ``k`` of training-time test (the step-0 keys causally, each step's own key at its position) gives, at
    every position ``i``, the logits the head gives when drafting: pairs ``0..i`` read into its cache from the
    target's features, then ``k`` drafted tokens read with its own states."""
    model = target()
    head = new_head(model, torch.arange(96), seed=1)
    torch.nn.init.normal_(head.fc.weight, std=0.1)  # not the identity start: every layer matters
    ids = torch.tensor([[5, 9, 14, 20, 7, 33, 41, 2, 60, 61]])
    batch = Batch(ids, torch.ones_like(ids), torch.ones_like(ids))
    embed = model.get_input_embeddings()
    features, law, usable = target_pass(model, head, batch)
    steps = 3
    captured = []
    real_lm_head = head.lm_head.forward
    head.lm_head.forward = lambda x: captured.append(real_lm_head(x)) or captured[-1]
    ttt_losses(head, embed, batch, features, law, usable, steps)
    del head.lm_head.forward
    for i in range(ids.shape[1] - 1 - steps):
        cache = RaggedCache(head, 1, ids.device)
        out = cache.forward_outputs(ids[:, 1:i + 2], torch.ones(1, i + 1), features=features[:, :i + 1],
                                    inputs_embeds=embed(ids[:, 1:i + 2]))
        hidden = out.hidden[:, -1:]
        torch.testing.assert_close(captured[0][0, i], out.logits[0, -1], rtol=0, atol=1e-9)
        for k in range(1, steps):
            token = ids[:, i + 1 + k:i + 2 + k]  # teacher-forced: the drafted token is the true one
            out = cache.forward_outputs(token, torch.ones(1, 1), features=hidden, inputs_embeds=embed(token))
            hidden = out.hidden[:, -1:]
            torch.testing.assert_close(captured[k][0, i], out.logits[0, -1], rtol=0, atol=1e-9)


def test_training_raises_held_out_acceptance():
    """On a target whose next token follows from its context in a learnable way (the synthetic damped pair's
    target: its later layers barely change the first one's answer), a head trained on 40 of its answers predicts
    the next-but-one token of 8 held-out answers: acceptance at the first drafted position from ~0 to above 0.6."""
    from decoding.model_pairs.synthetic import damped_pair

    torch.manual_seed(0)
    model, _ = damped_pair(num_layers=4, hidden_size=32, vocab_size=96, damping=0.03, seed=0, dtype=torch.float64)
    model.requires_grad_(False)
    data = records(model, count=48)
    train, heldout = data[:40], data[40:]
    head = new_head(model, draft_vocabulary(train, 64, 96))
    embed = model.get_input_embeddings()
    evaluation = [batch_of(heldout, 0)]
    before = evaluate(head, embed, model, evaluation, steps=2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(40):
        training_step(head, embed, model, batch_of(train, 0), optimizer, steps=2, decay=0.8, clip=0.5)
    after = evaluate(head, embed, model, evaluation, steps=2)
    assert before["acceptance"][0] < 0.1 and after["acceptance"][0] > 0.6, (before, after)
    assert after["acceptance"][1] > 0.4 and after["positions"] == before["positions"] > 100


def test_held_out_acceptance_counts_undraftable_positions_as_misses():
    """``acceptance`` is over every answer position; where the target's top token (from a plain forward: the
    oracle) is outside the draft vocabulary the head misses. So coverage is the share of draftable positions, the
    first position's acceptance is the in-vocabulary figure times coverage, and a head that drafts every id gets
    the same figure both ways."""
    model = target()
    data = records(model, count=6, length=10)
    batches = [batch_of(data, 0)]
    embed = model.get_input_embeddings()
    with torch.no_grad():
        top = model(batches[0].ids, attention_mask=batches[0].mask).logits.argmax(-1)  # [b, T]
    asked = (batches[0].trained * batches[0].mask)[:, 2:].bool()  # pair i predicts token i + 2
    everyone = evaluate(new_head(model, torch.arange(96), seed=1), embed, model, batches, 2)
    assert everyone["coverage"] == 1.0 and everyone["acceptance"] == pytest.approx(everyone["acceptance_in_vocab"])
    assert everyone["positions"] == int(asked.sum())
    half = torch.arange(0, 96, 2)
    partial = evaluate(new_head(model, half, seed=1), embed, model, batches, 2)
    draftable = torch.isin(top[:, 1:-1], half)[asked]
    assert partial["coverage"] == pytest.approx(float(draftable.float().mean()))
    assert 0 < partial["coverage"] < 1
    assert partial["acceptance"][0] == pytest.approx(partial["acceptance_in_vocab"][0] * partial["coverage"])
    assert partial["reach"][-1] <= partial["reach_in_vocab"][-1]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), size=st.integers(4, 24), data=st.data())
def test_a_head_given_a_new_vocabulary_keeps_its_trained_rows_and_starts_new_ids_from_the_targets(seed, size, data):
    """Choosing the vocabulary again, of 12 ids or of another size: an id the head kept keeps its trained row (so
    its logits are unchanged) and its optimizer moments; a new id gets half the target's output row and zero
    moments; the id maps say the new ids; the optimizer goes on stepping the resized output layer."""
    keep = data.draw(st.integers(0, min(12, size)), label="keep")
    model = target()
    rng = torch.Generator().manual_seed(seed)
    old = torch.randperm(96, generator=rng)[:12].sort().values
    head = new_head(model, old, seed=1)
    torch.nn.init.normal_(head.lm_head.weight, generator=rng)  # "trained": no longer the target's rows
    optimizer = torch.optim.AdamW(head.parameters())
    head.lm_head.weight.sum().backward()
    optimizer.step()
    moments = {k: v.clone() for k, v in optimizer.state[head.lm_head.weight].items() if v.dim() == 2}
    rows = dict(zip(old.tolist(), head.lm_head.weight.detach().clone()))
    others = torch.tensor([i for i in range(96) if i not in set(old.tolist())])
    new_ids = torch.cat([old[torch.randperm(12, generator=rng)[:keep]],
                         others[torch.randperm(len(others), generator=rng)[:size - keep]]]).sort().values
    assert revocabulary(head, model, new_ids, optimizer) == size - keep
    assert head.target_ids().tolist() == new_ids.tolist() and head.lm_head.out_features == size
    assert head.t2d.nonzero().flatten().tolist() == new_ids.tolist()
    output = model.get_output_embeddings().weight
    for row, token in enumerate(new_ids.tolist()):
        expected = rows[token] if token in rows else 0.5 * output[token]
        assert torch.equal(head.lm_head.weight[row], expected.to(head.lm_head.weight))
        for name, moment in optimizer.state[head.lm_head.weight].items():
            if name in moments:
                was = moments[name][old.tolist().index(token)] if token in rows else torch.zeros_like(moment[row])
                assert torch.equal(moment[row], was)
    optimizer.zero_grad()
    head.lm_head.weight.sum().backward()
    optimizer.step()  # moments and parameter agree in shape
    with tempfile.TemporaryDirectory() as folder:
        save_head(head, Path(folder))
        saved = load_head(Path(folder))
    assert saved.lm_head.out_features == size and saved.target_ids().tolist() == new_ids.tolist()
    with pytest.raises(ValueError, match="ascending distinct"):
        revocabulary(head, model, new_ids.flip(0) if size > 1 else new_ids.repeat(2))


def test_old_curve_points_are_renamed_in_vocabulary_and_new_ones_kept():
    old = {"step": 5, "acceptance": [0.4], "reach": [0.4], "agreement": [0.4], "positions": 10}
    assert cli.in_vocab_only(old) == {"step": 5, "acceptance_in_vocab": [0.4], "reach_in_vocab": [0.4],
                                      "agreement_in_vocab": [0.4], "positions": 10}
    new = {"acceptance": [0.3], "acceptance_in_vocab": [0.4]}
    assert cli.in_vocab_only(new) is new


def test_the_command_trains_evaluates_saves_and_resumes(tmp_path):
    tokenizer = word_tokenizer()
    folder = save_llama(tmp_path / "target", num_layers=4, seed=0, tokenizer=tokenizer)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    data = records(model, count=30, length=12)
    torch.save({"meta": {}, "records": data}, tmp_path / "teacher.pt")
    argv = ["--target", str(folder), "--data", str(tmp_path / "teacher.pt"), "--out", str(tmp_path / "run"),
            "--draft-vocab", "32", "--ttt", "2", "--steps", "4", "--eval-every", "2", "--batch-tokens", "256",
            "--heldout", "0.2"]
    assert cli.main(argv) == 0
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["steps"] == 4 and [point["step"] for point in record["curve"]] == [2, 4]
    assert len(record["curve"][-1]["acceptance"]) == 2
    head = load_head(tmp_path / "run" / "head")
    assert head.lm_head.out_features == 32 and int(head.t2d.sum()) == 32
    assert cli.main([*argv[:-8], "--ttt", "2", "--steps", "6", "--eval-every", "2", "--batch-tokens", "256",
                     "--heldout", "0.2", "--resume", "--lr-end", "0"]) == 0
    assert json.loads((tmp_path / "run" / "record.json").read_text())["steps"] == 6
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # annealed over the resumed run's 2 steps
    # the vocabulary chosen again from more data: measured before and after, at the same step, then trained on
    data += [{"ids": torch.cat([r["ids"][:4], r["ids"][4:].flip(0)]), "start": 4} for r in data]
    torch.save({"meta": {}, "records": data}, tmp_path / "teacher.pt")
    assert cli.main([*argv[:-8], "--ttt", "2", "--steps", "8", "--eval-every", "2", "--batch-tokens", "256",
                     "--heldout", "0.2", "--resume", "--reselect-vocab"]) == 0
    curve = json.loads((tmp_path / "run" / "record.json").read_text())["curve"]
    assert [p["step"] for p in curve] == [2, 4, 6, 6, 6, 8]
    assert all("acceptance_in_vocab" in p and 0 < p["coverage"] <= 1 for p in curve)
    assert curve[3]["note"].startswith("before") and "new ids" in curve[4]["note"]
    counts = torch.bincount(torch.cat([r["ids"][4:] for r in data if not cli.held_out(r, 0.2)]), minlength=96)
    head = load_head(tmp_path / "run" / "head")
    assert counts[head.target_ids()].sum() == counts.sort(descending=True).values[:32].sum()
    # a larger vocabulary: asked without --reselect-vocab it is refused, with it the head grows and trains on
    resized = [*argv[:-8], "--ttt", "2", "--eval-every", "2", "--batch-tokens", "256", "--heldout", "0.2", "--resume",
               "--draft-vocab", "48", "--steps", "10"]
    with pytest.raises(SystemExit, match="has 32 draft ids; add --reselect-vocab"):
        cli.main(resized)
    assert cli.main([*resized, "--reselect-vocab"]) == 0
    head = load_head(tmp_path / "run" / "head")
    assert head.lm_head.out_features == 48
    assert counts[head.target_ids()].sum() == counts.sort(descending=True).values[:48].sum()
    assert json.loads((tmp_path / "run" / "record.json").read_text())["steps"] == 10


def test_choosing_the_vocabulary_again_needs_a_trained_head(tmp_path, capsys):
    (tmp_path / "t.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        cli.parse_args(["--target", "x", "--data", str(tmp_path / "t.pt"), "--out", str(tmp_path), "--reselect-vocab"])
    assert "--reselect-vocab changes a trained head: it needs --resume" in capsys.readouterr().err


def test_the_learning_rate_anneals_by_a_cosine_and_needs_a_limit(tmp_path, capsys):
    assert cli.annealed(3e-4, 3e-5, 0.0) == 3e-4 and cli.annealed(3e-4, 3e-5, 1.0) == pytest.approx(3e-5)
    assert cli.annealed(3e-4, 0.0, 0.5) == pytest.approx(1.5e-4) and cli.annealed(3e-4, 0.0, 7.0) == 0.0
    (tmp_path / "t.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        cli.parse_args(["--target", "x", "--data", str(tmp_path / "t.pt"), "--out", str(tmp_path), "--lr-end", "0"])
    assert "--lr-end must be in [0, --lr] and needs --time-limit or --steps" in capsys.readouterr().err


def test_bad_settings_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.parse_args(["--target", "x", "--data", str(tmp_path / "none.pt"), "--out", str(tmp_path)])
    assert "no data file" in capsys.readouterr().err


def test_the_held_out_split_is_by_prompt_and_stable_as_data_grow():
    from decoding.model_pairs.heads.cli import held_out

    rng = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 100, (int(n),), generator=rng) for n in torch.randint(2, 9, (400,), generator=rng)]
    answers = lambda prompt: [{"ids": torch.cat([prompt, torch.randint(3, 100, (5,), generator=rng)]),  # noqa: E731
                               "start": len(prompt)} for _ in range(3)]
    records = [answer for prompt in prompts for answer in answers(prompt)]
    sides = [held_out(r, 0.1) for r in records]
    assert all(len(set(sides[i:i + 3])) == 1 for i in range(0, len(records), 3)), "answers of a prompt split"
    assert 0.05 < sum(sides) / len(sides) < 0.15
    assert [held_out(r, 0.1) for r in records[:30]] == sides[:30]  # a record's side needs no other record


def test_vocabulary_coverage_counts_held_out_tokens_inside_the_training_vocabulary(tmp_path, capsys):
    from decoding.model_pairs.heads import coverage

    training = [{"ids": torch.tensor([1, 5, 5, 5, 6, 6, 7]), "start": 1}]
    heldout = [{"ids": torch.tensor([2, 5, 6, 7, 8]), "start": 1}]
    assert coverage.coverage(training, heldout, 1, 10) == 0.25  # {5}: one of 5, 6, 7, 8
    assert coverage.coverage(training, heldout, 2, 10) == 0.5  # {5, 6}
    assert coverage.coverage(training, heldout, 3, 10) == 0.75  # {5, 6, 7}: 8 never appears in training
    rng = torch.Generator().manual_seed(0)
    records = [{"ids": torch.randint(3, 50, (12,), generator=rng), "start": 4} for _ in range(60)]
    torch.save({"meta": {}, "records": records}, tmp_path / "teacher.pt")
    assert coverage.main(["--data", str(tmp_path / "teacher.pt"), "--sizes", "8,64", "--heldout", "0.3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["coverage"]["64"] == 1.0 and 0 < result["coverage"]["8"] < 1
