"""Distillation: the four divergences, the offline greedy acceptance against SpeculativeDecoding's own stats, the
draft's initialisation and saving, a short training run on cached teacher outputs, and the prompt sets."""

from __future__ import annotations

import json

import pytest
import torch

import decoding
from decoding.model_pairs.distill.cli import train
from decoding.model_pairs.distill.draft import DraftShape, greedy_acceptance, make_draft, save_draft
from decoding.model_pairs.distill.losses import DIVERGENCES, bucket_laws, divergence
from decoding.model_pairs.distill.teacher import generate_records, score_windows
from gguf_files import tiny_llama

V = 40


def _laws(seed=0, n=6, k=5):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.log_softmax(torch.randn(n, V, generator=g) * 2, -1)
    draft = torch.log_softmax(torch.randn(n, V, generator=g) * 2, -1)
    top_logp, top_ids = teacher.topk(k, -1)
    return teacher, draft, top_ids.to(torch.int32), top_logp.to(torch.float16)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergences_vanish_on_equal_laws_and_are_positive_otherwise(name):
    teacher, draft, top_ids, top_logp = _laws()
    assert divergence(name, draft, top_ids, top_logp).item() > 1e-3
    same = divergence(name, teacher, top_ids, top_logp.float().to(torch.float16)).item()
    assert abs(same) < 2e-3  # float16 rounding of the cached log-probs only


def test_divergences_with_the_full_support_are_the_textbook_ones():
    teacher, draft, _, _ = _laws(k=V)
    top_logp, top_ids = teacher.topk(V, -1)  # k = V: no tail, the buckets are the tokens
    p, q = teacher.exp(), draft.exp()
    fkl = (p * (teacher - draft)).sum(-1).mean()
    rkl = (q * (draft - teacher)).sum(-1).mean()
    tv = 0.5 * (p - q).abs().sum(-1).mean()
    m = (p + q) / 2
    js = (0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)).mean()
    for name, expected in (("fkl", fkl), ("rkl", rkl), ("tv", tv), ("js", js)):
        got = divergence(name, draft, top_ids.to(torch.int32), top_logp)
        assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5), name


def test_buckets_are_laws_and_lower_bound_the_full_kl():
    teacher, draft, top_ids, top_logp = _laws(k=3)
    log_p, log_q = bucket_laws(draft, top_ids, top_logp)
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(6), atol=2e-3)
    assert torch.allclose(log_q.exp().sum(-1), torch.ones(6), atol=1e-5)
    full = (teacher.exp() * (teacher - draft)).sum(-1).mean()
    assert divergence("fkl", draft, top_ids, top_logp).item() <= full.item() + 1e-3


def test_offline_acceptance_equals_speculative_decodings_stats():
    """Replaying greedy steps on the target's continuation gives exactly what SpeculativeDecoding counts."""
    target, draft = tiny_llama(seed=0, layers=2).double(), tiny_llama(seed=0, layers=1).double()
    with torch.no_grad():  # a draft that agrees often but not always
        draft.model.layers[0].load_state_dict(target.model.layers[0].state_dict())
        draft.model.embed_tokens.weight.copy_(target.model.embed_tokens.weight)
        draft.lm_head.weight.copy_(target.lm_head.weight)
        draft.model.norm.weight.copy_(target.model.norm.weight)
    settings = dict(max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=2, eos_token_id=None)
    for seed in range(3):
        prompt = torch.randint(3, V, (1, 5), generator=torch.Generator().manual_seed(seed))
        full = target.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=3)
        out = target.generate(prompt, attention_mask=torch.ones_like(prompt), custom_generate=strategy, **settings)
        assert torch.equal(out, full)
        offline = greedy_acceptance(draft, [(full[0], 5)], g=3)
        stats = strategy.stats
        assert offline["steps"] == stats.steps
        assert offline["alpha"] == pytest.approx(stats.alpha, abs=1e-4)
        assert offline["mean_accepted_length"] == pytest.approx(stats.mean_accepted_length, abs=1e-4)


def test_draft_init_keeps_the_vocabulary_and_saves_in_float16(tmp_path):
    target = tiny_llama(hidden=32)
    draft = make_draft(target, DraftShape(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=32, head_dim=8))
    assert draft.config.vocab_size == target.config.vocab_size and draft.config.tie_word_embeddings
    # The embedding is the target's projected on its top principal directions: its Gram matrix is the rank-16
    # approximation of the target's (centred) one.
    emb = target.get_input_embeddings().weight.detach()
    proj = draft.get_input_embeddings().weight.detach()
    _, s, _ = torch.linalg.svd(emb - emb.mean(0))
    assert torch.linalg.matrix_rank(proj) <= 16 and proj.shape == (emb.shape[0], 16)
    size = save_draft(draft, tmp_path / "d")
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["dtype"] == "float32" and size < sum(p.numel() for p in draft.parameters()) * 2 + 10_000
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "d")
    assert next(loaded.parameters()).dtype == torch.float32
    ids = torch.tensor([[4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, draft.half().float()(ids).logits, atol=1e-4)


def test_teacher_records_and_a_short_training_run_lower_the_loss():
    from transformers import PreTrainedTokenizerFast

    from gguf_files import CHAT_TEMPLATE

    target = tiny_llama(seed=3)
    windows = torch.randint(3, V, (6, 24), generator=torch.Generator().manual_seed(0))
    records = score_windows(target, windows, batch_size=3, k=8, log=lambda m: None)
    assert len(records) == 6 and records[0]["topk_ids"].shape == (23, 8) and records[0]["start"] == 1
    with torch.no_grad():
        expected = torch.log_softmax(target(windows[:1]).logits[0, :-1], -1).topk(8, -1)
    assert torch.equal(records[0]["topk_ids"].long(), expected.indices)

    tokenizer = _char_tokenizer(PreTrainedTokenizerFast, CHAT_TEMPLATE)
    generated = generate_records(target, tokenizer, ["ab", "abcabc"], max_new_tokens=6, batch_size=2, k=8,
                                 log=lambda m: None)
    for r in generated:
        n = len(r["ids"]) - r["start"]
        assert 1 <= n <= 6 and r["topk_ids"].shape == (n, 8)
        with torch.no_grad():  # the cached law is the target's at that position
            logits = target(r["ids"][None]).logits[0, r["start"] - 1: -1]
        assert torch.equal(r["topk_ids"][:, 0].long(), logits.argmax(-1))

    draft = make_draft(target, DraftShape(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=32, head_dim=8))
    result = train(draft, records, [1.0] * len(records), divergence_name="rkl", steps=30, batch_tokens=40,
                   lr=3e-3, warmup=3, seed=0, pad_id=2, log_every=10)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0] and result["positions"] >= 30 * 40


def test_train_continues_a_saved_draft_without_the_target_and_stops_at_its_time_limit(tmp_path):
    from decoding.model_pairs.distill.cli import main

    target = tiny_llama(seed=3)
    windows = torch.randint(3, V, (4, 16), generator=torch.Generator().manual_seed(1))
    torch.save({"records": score_windows(target, windows, batch_size=2, k=4, log=lambda m: None)}, tmp_path / "t.pt")
    save_draft(make_draft(target, DraftShape(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                             num_key_value_heads=1, intermediate_size=32, head_dim=8)),
               tmp_path / "init")
    common = ["train", "--data", str(tmp_path / "t.pt"), "--divergence", "tv", "--steps", "5", "--batch-tokens",
              "20", "--warmup", "1", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit):  # neither a target to initialise from nor a draft to continue
        main(common)
    assert main(common + ["--init", str(tmp_path / "init"), "--time-limit", "0"]) == 0
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert (record["train"]["steps"], record["train"]["steps_planned"], record["device"]) == (1, 5, "cpu")
    assert (tmp_path / "run" / "draft" / "model.safetensors").is_file()


def _char_tokenizer(cls, template):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz\n ":
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = cls(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = template
    return fast


def test_training_and_held_out_prompts_are_disjoint():
    from decoding.evals.bench.prompts import CHAT_PROMPTS_DIR, load_prompt_set
    from decoding.model_pairs.distill.prompts import CATEGORIES, training_prompts

    train_set = training_prompts(passages=["A passage about modules.", "Another passage about classes."])
    held = load_prompt_set(CHAT_PROMPTS_DIR)
    assert {p.category for p in held} == set(CATEGORIES)
    train_texts = {p["prompt"].strip().lower() for p in train_set}
    assert not train_texts & {p.text.strip().lower() for p in held}
    assert len(train_set) > 300 and {p["category"] for p in train_set} == set(CATEGORIES)


def test_varied_prompts_are_deterministic_cover_every_category_and_miss_the_held_out_set():
    from decoding.evals.bench.prompts import CHAT_PROMPTS_DIR, load_prompt_set
    from decoding.model_pairs.distill.prompt_bank import varied_prompts
    from decoding.model_pairs.distill.prompts import CATEGORIES

    sources = (["def f(a):\n    return a"], ["f: " + "Return the thing. " * 20])
    first = varied_prompts(3, 600, sources)
    assert first == varied_prompts(3, 600, sources)
    assert len(first) == 600 and {p["category"] for p in first} == set(CATEGORIES)
    texts = {p["prompt"] for p in first}
    assert len(texts) > 450, "a seed should give mostly distinct messages"
    other = {p["prompt"] for p in varied_prompts(4, 600, sources)}
    assert len(texts & other) < 150, "different seeds should give mostly different messages"
    held = {p.text.strip().lower() for p in load_prompt_set(CHAT_PROMPTS_DIR)}
    assert not {t.strip().lower() for t in texts} & held


def test_prose_passages_keep_whole_sentences_of_prose_and_drop_code():
    from decoding.model_pairs.distill.prompt_bank import prose_passages

    prose = "Rivers carry water to the sea. " * 10 + "And then"
    code = "Here is the code:\n```python\ndef f(x):\n    return x\n```\n" + "It returns x. " * 20
    inline = "The `get` method returns a value. " * 10
    kept = prose_passages([prose, code, "Too short.", prose, "A" * 1300 + ".", inline])
    assert kept == ["Rivers carry water to the sea. " * 9 + "Rivers carry water to the sea."]


def test_varied_prompts_read_prose_passages_for_half_the_summaries_and_retrievals():
    """With passages, summarization and retrieval prompts read them about half the time (the rest: docstrings),
    retrieval asking a question any prose answers; without, none do; other categories are drawn as before."""
    from decoding.model_pairs.distill import prompt_bank

    sources = (["def f(a):\n    return a"], ["f: " + "Return the thing. " * 20])
    passages = [f"Passage {i} says the river is long. " * 8 for i in range(30)]
    plain, read = prompt_bank.varied_prompts(5, 800, sources), prompt_bank.varied_prompts(5, 800, sources, passages)
    both = [p for p in read if p["category"] in ("summarization", "retrieval")]
    with_prose = [p for p in both if "the river is long" in p["prompt"]]
    assert 0.3 < len(with_prose) / len(both) < 0.7
    assert not any("the river is long" in p["prompt"] for p in plain)
    questions = [p["prompt"].rsplit("Question: ", 1)[1] for p in with_prose if p["category"] == "retrieval"]
    assert questions and set(questions) <= set(prompt_bank._PROSE_RETRIEVAL)
    assert [p["category"] for p in plain] == [p["category"] for p in read]


def test_the_teacher_reads_passages_from_earlier_answers_and_refuses_them_without_varied_prompts(tmp_path, capsys):
    from decoding.model_pairs.distill import teacher

    class Characters:  # ids are code points: decoding needs no vocabulary
        def batch_decode(self, rows, skip_special_tokens):
            return ["".join(map(chr, row.tolist())) for row in rows]

    answer = "Clouds form when warm air rises and cools. " * 8
    records = [{"ids": torch.tensor([ord(c) for c in "Q?" + text]), "start": 2} for text in (answer, "def f(): pass")]
    torch.save({"meta": {}, "records": records}, tmp_path / "a.pt")
    assert teacher.answer_passages([tmp_path / "a.pt"], Characters()) == [answer.strip()]
    with pytest.raises(SystemExit, match="no prose answer"):
        teacher.answer_passages([tmp_path / "a.pt"], type("Code", (), {"batch_decode": lambda *a, **k: ["x = 1"]})())
    with pytest.raises(SystemExit):
        teacher.main(["--target", "x", "--kind", "on-policy", "--out", str(tmp_path / "o.pt"), "--passages",
                      str(tmp_path / "a.pt")])
    assert "--passages are read by varied prompts only" in capsys.readouterr().err
