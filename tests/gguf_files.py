"""A tiny Llama written as a GGUF file with gguf's own writer (no network, no shipped weights), for the loading
tests: a byte-level BPE tokenizer of 262 tokens with a ChatML template, and float32 weights laid out as
llama.cpp's converter lays them out (query and key rows permuted for its rope), so that transformers' reader
must give back exactly the Llama the test built."""

from __future__ import annotations

from pathlib import Path

import torch

from decoding.token_maps import byte_decoder

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "o n", "Ġ s"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _byte_chars() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes (bytes_to_unicode), in byte order."""
    return [char for char, _ in sorted(byte_decoder().items(), key=lambda item: item[1])]


def tokens() -> list[str]:
    merged = [m.replace(" ", "") for m in MERGES]
    return SPECIALS + _byte_chars() + merged


def tiny_llama(seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2):
    """The reference Llama (random weights, float32, untied head) that :func:`write_gguf` writes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokens()), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # spread the logits so greedy choices are clear
            p.normal_(0, 0.3 if p.dim() > 1 else 0.1).add_(1.0 if p.dim() == 1 else 0.0)
    return model


def _permute(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (transformers undoes it when reading)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def write_gguf(model, path: Path, name: str = "tiny-llama") -> Path:
    """Write ``model`` (from :func:`tiny_llama`) and the tiny tokenizer as a GGUF file at ``path``."""
    import gguf

    c = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens())
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens()) - len(SPECIALS)))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute(torch.from_numpy(state[p + "self_attn.q_proj.weight"]), c.num_attention_heads).numpy()
        k = _permute(torch.from_numpy(state[p + "self_attn.k_proj.weight"]), c.num_key_value_heads).numpy()
        for gguf_name, array in (("attn_norm", state[p + "input_layernorm.weight"]), ("attn_q", q), ("attn_k", k),
                                 ("attn_v", state[p + "self_attn.v_proj.weight"]),
                                 ("attn_output", state[p + "self_attn.o_proj.weight"]),
                                 ("ffn_norm", state[p + "post_attention_layernorm.weight"]),
                                 ("ffn_gate", state[p + "mlp.gate_proj.weight"]),
                                 ("ffn_up", state[p + "mlp.up_proj.weight"]),
                                 ("ffn_down", state[p + "mlp.down_proj.weight"])):
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def convert_and_load(gguf_path: str, caches: list[str], barrier, results) -> None:
    """One of the racing processes of the concurrent-conversion test: for each cache folder in turn, wait for the
    other process at ``barrier`` (so that both convert the same file into the same cache at once), convert and
    load the model and tokenizer, check them against :func:`tiny_llama` and put ``(cache, "ok" or what went
    wrong)`` on ``results``."""
    import traceback

    from decoding.model_pairs.gguf import load_model_and_tokenizer

    torch.set_num_threads(1)  # two processes on a small machine
    reference = tiny_llama()
    ids = torch.tensor([[5, 40, 77, 120, 3, 9, 200]])
    for cache in caches:
        barrier.wait(timeout=300)
        try:
            model, tokenizer = load_model_and_tokenizer(gguf_path, cache)
            with torch.no_grad():
                same = torch.equal(model(ids).logits, reference(ids).logits)
            chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                                 tokenize=False)
            result = "ok" if same and chat.endswith("<|im_start|>assistant\n") else "loaded a different model"
        except Exception:  # any failure is the test's finding: send the child's traceback to the test
            result = traceback.format_exc()
        results.put((cache, result))
