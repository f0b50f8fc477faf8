"""Train the embedded draft/target pair from the Python standard library's source, reproducibly.

    python -m decoding.model_pairs.train --out decoding/model_pairs/embedded --preset cpu --seed 0

Stages, in order (``--stages`` runs a subset; each later stage reads what the earlier ones wrote under ``--out``):

1. ``tokenizer``: byte-level BPE (``tokenizers``) trained on the training files only, saved as a
   ``PreTrainedTokenizerFast`` (``<|endoftext|>`` is bos and eos, ``<|pad|>`` pads).
2. ``target``: a Llama-style model trained on next-token prediction (AdamW, warmup + cosine, gradient clipping,
   bfloat16 autocast where the device supports it).
3. ``draft``: a much smaller Llama distilled from the target (DistillSpec-style): the loss is the KL divergence
   from the target's next-token law to the draft's, mixed with a little of the data loss.
4. ``eval``: held-out losses of both models, and on held-out files (greedy, batch 1) the acceptance of
   speculative decoding and a short speedup measurement against the target alone.
5. ``card``: ``MODEL_CARD.md`` beside the weights, from the records the stages wrote (``train_log.json``).

The corpus and its deterministic held-out split are described in :mod:`decoding.model_pairs.corpus`. Weights are
stored in float16 (the shipped size limit is 64 MB); ``config.json`` says ``float32``, so ``from_pretrained(dir)``
upcasts them and runs in float32 on a CPU. Everything random is seeded from ``--seed`` (data order, init);
bit-exact reproduction additionally needs the same torch build, device and thread count.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from .corpus import HELD_OUT_FRACTION, load_corpus

EOS = "<|endoftext|>"
PAD = "<|pad|>"
STAGES = ("tokenizer", "target", "draft", "eval", "card")
LOG_NAME = "train_log.json"
TARGET_TIME_SHARE = 0.62


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class Preset:
    vocab_size: int
    target: ModelShape
    draft: ModelShape
    seq_len: int
    target_batch: int
    target_steps: int
    target_lr: float
    draft_batch: int
    draft_steps: int
    draft_lr: float
    warmup: int
    distill_weight: float = 0.9  # loss = w * KL(target || draft) + (1 - w) * data cross-entropy
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_batches: int = 8
    max_files: int | None = None  # for quick tests: only the first files of the sorted corpus
    eval_prompts: int = 12
    prompt_tokens: int = 128
    new_tokens: int = 128
    speed_prompts: int = 4
    speed_draft_lengths: tuple = (2, 3, 4, 5, 6)


TARGET_SHAPE = ModelShape(512, 8, 8, 4, 1408)
DRAFT_SHAPE = ModelShape(256, 2, 4, 2, 704)

PRESETS = {
    # ~45 min on 2 CPU cores (bfloat16 autocast on a CPU with AVX512-BF16): what the shipped pair used.
    "cpu": Preset(
        vocab_size=4096, target=TARGET_SHAPE, draft=DRAFT_SHAPE, seq_len=512,
        target_batch=4, target_steps=1300, target_lr=2e-3, draft_batch=4, draft_steps=1200, draft_lr=3e-3,
        warmup=50, eval_batches=4, eval_prompts=8, speed_prompts=3, speed_draft_lengths=(3, 4, 5),
    ),
    # The same shapes, much longer training, for a GPU.
    "gpu": Preset(
        vocab_size=4096, target=TARGET_SHAPE, draft=DRAFT_SHAPE, seq_len=512,
        target_batch=64, target_steps=6000, target_lr=1.5e-3, draft_batch=64, draft_steps=4000, draft_lr=3e-3,
        warmup=200, eval_batches=32, eval_prompts=32, speed_prompts=8,
    ),
    # Tiny, for tests: a few seconds.
    "tiny": Preset(
        vocab_size=320, target=ModelShape(64, 2, 2, 1, 128), draft=ModelShape(32, 1, 2, 1, 64), seq_len=64,
        target_batch=2, target_steps=3, target_lr=1e-3, draft_batch=2, draft_steps=3, draft_lr=1e-3,
        warmup=1, eval_batches=1, max_files=12, eval_prompts=1, prompt_tokens=16, new_tokens=8, speed_prompts=0,
    ),
}


# ----------------------------------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _read_log(out: Path) -> dict:
    path = out / LOG_NAME
    return json.loads(path.read_text()) if path.exists() else {}


def _write_log(out: Path, log: dict) -> None:
    (out / LOG_NAME).write_text(json.dumps(log, indent=1, sort_keys=True) + "\n")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    return torch.device(name)


def _autocast_dtype(device: torch.device):
    """bfloat16 autocast on CUDA, and on CPUs with native bfloat16 matmul (AVX512-BF16 / AMX); else none."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        supported = False
    return torch.bfloat16 if supported else None


def _llama_config(shape: ModelShape, vocab_size: int, max_positions: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, max_position_embeddings=max_positions, tie_word_embeddings=True,
        rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=0, eos_token_id=0, pad_token_id=1, **asdict(shape),
    )


def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _lr(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warmup over ``warmup`` steps, times a cosine decay to 10% of the peak over ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / warmup)
    return peak * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _batch(stream: torch.Tensor, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``seq_len + 1`` tokens from the 1-D ``stream``: ``[batch, seq_len + 1]``."""
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=generator)
    return torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])


def _save_model(model, directory: Path, tokenizer) -> int:
    """Save in float16 with a float32 ``config.dtype`` (from_pretrained upcasts), plus tokenizer and gen config."""
    from transformers import GenerationConfig

    directory.mkdir(parents=True, exist_ok=True)
    half = model.to(torch.float16)
    half.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=0, pad_token_id=1)
    half.save_pretrained(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(directory)
    model.to(torch.float32)
    return sum(f.stat().st_size for f in directory.iterdir() if f.is_file())


def _load(directory: Path, device: torch.device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()


# ------------------------------------------------------------------------------------------------------ stages


def train_tokenizer(corpus, vocab_size: int, out: Path):
    """Byte-level BPE on the training files; saved under ``out/tokenizer``; returns the fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS, PAD], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2, show_progress=False,
    )
    tok.train_from_iterator((text for _, text in corpus.train), trainer=trainer, length=len(corpus.train))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    fast.model_max_length = 2048
    fast.save_pretrained(out / "tokenizer")
    return fast


def _load_tokenizer(out: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(out / "tokenizer" if (out / "tokenizer").exists() else out / "target")


def _encode(tokenizer, docs) -> torch.Tensor:
    """Concatenate documents, each followed by EOS, into one int64 stream."""
    ids = tokenizer.backend_tokenizer.encode_batch([text for _, text in docs])
    eos = tokenizer.eos_token_id
    flat = []
    for enc in ids:
        flat.extend(enc.ids)
        flat.append(eos)
    return torch.tensor(flat, dtype=torch.int64)


@torch.no_grad()
def _eval_loss(model, stream, preset: Preset, device, amp, batches: int, seed: int) -> float:
    model.eval()
    gen = torch.Generator().manual_seed(seed + 12345)
    total = 0.0
    for _ in range(batches):
        x = _batch(stream, preset.target_batch, preset.seq_len, gen).to(device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(input_ids=x[:, :-1]).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()
    model.train()
    return total / batches


def _train_loop(name, model, step_loss, preset, steps, batch, lr, device, seed, budget_s, log_every=10):
    """Shared AdamW loop; ``step_loss(x) -> (loss, record)``.

    The cosine schedule runs over ``progress = max(step / steps, elapsed / budget_s)``: with a time budget the
    run ends, schedule completed, after ``steps`` steps or ``budget_s`` seconds, whichever comes first.
    """
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": preset.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8,
    )
    gen = torch.Generator().manual_seed(seed + (1 if name == "target" else 2))
    model.train()
    history, started, done = [], time.time(), 0
    smooth = None
    for step in range(steps):
        progress = step / steps
        if budget_s is not None:
            progress = max(progress, (time.time() - started) / budget_s)
        if progress >= 1.0:
            _log(f"{name}: time budget reached at step {step}/{steps}")
            break
        for group in opt.param_groups:
            group["lr"] = _lr(step, progress, lr, preset.warmup)
        x = step_loss.batch(gen)
        loss, record = step_loss(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done = step + 1
        value = loss.item()
        smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
        if step % log_every == 0 or step == steps - 1:
            elapsed = time.time() - started
            tps = done * batch * preset.seq_len / max(elapsed, 1e-9)
            history.append({"step": step, "loss": round(value, 4), **record, "elapsed_s": round(elapsed, 1)})
            _log(f"{name} step {step}/{steps} ({progress:.0%}) loss {value:.4f} (smoothed {smooth:.4f}) {record} {tps:.0f} tok/s")
    return {
        "steps": done, "planned_steps": steps, "budget_s": budget_s, "tokens_seen": done * batch * preset.seq_len,
        "wall_s": round(time.time() - started, 1), "final_train_loss_smoothed": round(smooth or float("nan"), 4),
        "history": history,
    }


class _LMLoss:
    def __init__(self, model, stream, preset, device, amp):
        self.model, self.stream, self.preset, self.device, self.amp = model, stream, preset, device, amp

    def batch(self, gen):
        return _batch(self.stream, self.preset.target_batch, self.preset.seq_len, gen).to(self.device)

    def __call__(self, x):
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        return loss, {}


class _DistillLoss:
    def __init__(self, student, teacher, stream, preset, device, amp):
        self.student, self.teacher, self.stream = student, teacher, stream
        self.preset, self.device, self.amp = preset, device, amp

    def batch(self, gen):
        return _batch(self.stream, self.preset.draft_batch, self.preset.seq_len, gen).to(self.device)

    def __call__(self, x):
        inputs, labels = x[:, :-1], x[:, 1:].reshape(-1)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            with torch.no_grad():
                teacher = self.teacher(input_ids=inputs).logits
            student = self.student(input_ids=inputs).logits
        vocab = student.shape[-1]
        teacher_logp = F.log_softmax(teacher.float().reshape(-1, vocab), dim=-1)
        student_logp = F.log_softmax(student.float().reshape(-1, vocab), dim=-1)
        kl = F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")
        ce = F.nll_loss(student_logp, labels)
        w = self.preset.distill_weight
        with torch.no_grad():
            agree = (student_logp.argmax(-1) == teacher_logp.argmax(-1)).float().mean().item()
        return w * kl + (1 - w) * ce, {"kl": round(kl.item(), 4), "ce": round(ce.item(), 4), "agree": round(agree, 4)}


def train_model(kind, preset, out, device, seed, budget_s, train_stream, held_stream, tokenizer):
    from transformers import LlamaForCausalLM

    amp = _autocast_dtype(device)
    shape = preset.target if kind == "target" else preset.draft
    torch.manual_seed(seed + (10 if kind == "target" else 20))
    config = _llama_config(shape, len(tokenizer), max_positions=2048)
    model = LlamaForCausalLM(config).to(device)
    _log(f"{kind}: {_num_params(model) / 1e6:.2f}M parameters, autocast {amp}")
    if kind == "target":
        loss = _LMLoss(model, train_stream, preset, device, amp)
        record = _train_loop(kind, model, loss, preset, preset.target_steps, preset.target_batch,
                             preset.target_lr, device, seed, budget_s)
    else:
        teacher = _load(out / "target", device)
        loss = _DistillLoss(model, teacher, train_stream, preset, device, amp)
        record = _train_loop(kind, model, loss, preset, preset.draft_steps, preset.draft_batch,
                             preset.draft_lr, device, seed, budget_s)
    model.eval()
    record["held_out_loss"] = round(_eval_loss(model, held_stream, preset, device, amp, preset.eval_batches, seed), 4)
    record["train_loss"] = round(_eval_loss(model, train_stream, preset, device, amp, preset.eval_batches, seed), 4)
    record["parameters"] = _num_params(model)
    record["shape"] = asdict(shape)
    record["autocast"] = str(amp)
    record["threads"] = torch.get_num_threads()
    record["bytes_on_disk"] = _save_model(model.cpu(), out / kind, tokenizer)
    _log(f"{kind}: held-out loss {record['held_out_loss']}, train loss {record['train_loss']}")
    return record


@torch.no_grad()
def evaluate_pair(out: Path, preset: Preset, corpus, seed: int) -> dict:
    """Acceptance (g=4) and a short speedup measurement on held-out files, greedy, batch 1, CPU float32."""
    import decoding
    from transformers import AutoTokenizer

    device = torch.device("cpu")
    target, draft = _load(out / "target", device), _load(out / "draft", device)
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
    _log(f"eval: {result}")
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
        _log(f"speed: {result['speed']}")
    return result


def write_card(out: Path, log: dict) -> None:
    t, d, e = log.get("target", {}), log.get("draft", {}), log.get("eval", {})
    p = log.get("preset", {})

    def shape_line(rec):
        s = rec.get("shape", {})
        return (f"LlamaForCausalLM, {s.get('num_hidden_layers')} layers, hidden {s.get('hidden_size')}, "
                f"MLP {s.get('intermediate_size')}, {s.get('num_attention_heads')} heads "
                f"({s.get('num_key_value_heads')} KV heads), vocab {log.get('vocab_size')}, tied embeddings; "
                f"{rec.get('parameters', 0) / 1e6:.2f}M parameters")

    def train_line(rec, lr):
        stopped = "" if rec.get("steps") == rec.get("planned_steps") else \
            f" (the cosine schedule ran to completion over a {rec.get('budget_s', 0) / 60:.1f}-minute time budget, " \
            f"before the preset's {rec.get('planned_steps')} steps)"
        return (f"{rec.get('steps')} steps{stopped}, {rec.get('tokens_seen', 0):,} tokens seen, peak lr {lr}, "
                f"{rec.get('wall_s')} s wall time, {rec.get('threads', 1)} CPU thread(s), autocast {rec.get('autocast')}")

    speed = e.get("speed", {})
    held = log.get("held_out_files", [])
    lines = [
        "# Embedded model pair: a small Python-code target and its distilled draft",
        "",
        "Trained from scratch by `decoding/model_pairs/train.py` on the Python standard library's own source, so",
        "that speculative decoding runs without downloads. These are tiny code models: useful to measure decoding",
        "speed and acceptance, not to write code.",
        "",
        "## Files",
        "",
        "- `target/`, `draft/`: `AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`"
        " load each (config.json, generation_config.json, model.safetensors, tokenizer files). Weights are stored"
        " in float16; `config.json` says float32, so loading upcasts them.",
        f"- Sizes on disk: target {t.get('bytes_on_disk', 0) / 1e6:.1f} MB, draft {d.get('bytes_on_disk', 0) / 1e6:.1f} MB.",
        "",
        "## Corpus",
        "",
        f"Every `.py` file under `sysconfig.get_paths()['stdlib']` of Python {log.get('python')} "
        "(site-packages skipped; the stdlib's own tests included; non-UTF-8 files skipped), sorted by relative "
        f"path. {log.get('train_files')} training files ({log.get('train_chars', 0):,} characters, "
        f"{log.get('train_tokens', 0):,} tokens), {len(held)} held-out files ({log.get('held_out_tokens', 0):,} "
        f"tokens). A file is held out when the first 8 bytes of sha256(relative path) fall below "
        f"{HELD_OUT_FRACTION} * 2^64; held-out files were used neither for the tokenizer nor for either model. "
        f"Skipped (not UTF-8): {', '.join(log.get('skipped_files', [])) or 'none'}.",
        "",
        "## Tokenizer",
        "",
        f"Byte-level BPE (`tokenizers`), vocabulary {log.get('vocab_size')}, trained on the training files only. "
        f"`{EOS}` (id 0) is bos and eos and separates files in the training stream; `{PAD}` (id 1) pads.",
        "",
        "## Models",
        "",
        f"- Target: {shape_line(t)}.",
        f"- Draft: {shape_line(d)}.",
        "",
        "## Training",
        "",
        f"Sequence length {p.get('seq_len')}, random windows of the concatenated training stream, AdamW "
        f"(betas 0.9/0.95, weight decay {p.get('weight_decay')}), linear warmup {p.get('warmup')} steps then "
        f"cosine decay to 10%, gradient clipping {p.get('grad_clip')}.",
        "",
        f"- Target: next-token cross-entropy, batch {p.get('target_batch')}; {train_line(t, p.get('target_lr'))}.",
        f"- Draft: distilled from the trained target: loss = {p.get('distill_weight')} * KL(target || draft) + "
        f"{round(1 - p.get('distill_weight', 0.9), 2)} * data cross-entropy, batch {p.get('draft_batch')}; "
        f"{train_line(d, p.get('draft_lr'))}.",
        "",
        "| model | train loss | held-out loss |",
        "|---|---|---|",
        f"| target | {t.get('train_loss')} | {t.get('held_out_loss')} |",
        f"| draft | {d.get('train_loss')} | {d.get('held_out_loss')} |",
        "",
        f"Losses are next-token cross-entropy (nats/token) over {p.get('eval_batches')} random batches of training "
        "and of held-out windows after training (bfloat16 autocast where training used it). Draft distillation "
        f"ended with smoothed training loss {d.get('final_train_loss_smoothed')} and greedy agreement with the "
        f"target of {(d.get('history') or [{}])[-1].get('agree')} on its last logged batch.",
        "",
        "## Measured acceptance and speed (held-out files)",
        "",
        f"Greedy, batch 1, CPU float32, {torch.get_num_threads()} threads, prompts = the first "
        f"{e.get('prompt_tokens')} tokens of the first {e.get('prompts')} held-out files with at least "
        f"{(e.get('prompt_tokens') or 0) + (e.get('new_tokens') or 0)} tokens, {e.get('new_tokens')} new tokens "
        f"each, `SpeculativeDecoding(draft, num_draft_tokens=4)`:",
        "",
        f"- alpha (accepted / acceptance tests) = {e.get('alpha')}",
        f"- acceptance rate (accepted / drafted) = {e.get('acceptance_rate')}",
        f"- mean accepted length (tokens per verification step) = {e.get('mean_accepted_length')}",
        f"- greedy outputs identical to the target's own greedy generate: {e.get('greedy_outputs_identical')}",
        "",
    ]
    if speed:
        lines += [
            f"Speed, {len(speed_prompts_files(e))} prompts, runs interleaved, one warm-up each, on a shared machine "
            f"(a quick check: `decoding-bench` is the real benchmark): target alone "
            f"{speed.get('target_tokens_per_s')} tokens/s; speedup of speculative decoding by draft length g: "
            + ", ".join(f"g={g}: {s}x" for g, s in speed.get("speedup_by_g", {}).items()) + ".",
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```",
        *_canonical_command(log),
        "```",
        "",
        *(["The shipped files were made by these invocations, one per group of stages (the same as the single "
           "command above, which runs every stage in order; `--stages tokenizer` also resets the record):", "",
           "```", *log.get("commands", []), "```", ""] if len(log.get("commands", [])) > 1 else []),
        f"Seed {log.get('seed')}, preset `{log.get('preset_name')}`, device {log.get('device')}, torch "
        f"{log.get('torch')}, transformers {log.get('transformers')}, tokenizers {log.get('tokenizers')}, "
        f"Python {log.get('python')}, {log.get('threads')} CPU threads. Total wall time {log.get('wall_s_total')} s."
        + (f" {log['note']}" if log.get("note") else ""),
        "",
        "## Held-out files",
        "",
        ", ".join(f"`{h}`" for h in held),
        "",
    ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


def _canonical_command(log: dict) -> list:
    """The single command equivalent to the recorded invocations: the last one without ``--stages``."""
    words = log.get("command", "").split()
    if "--stages" in words:
        i = words.index("--stages")
        del words[i : i + 2]
    return [" ".join(words)]


def speed_prompts_files(e: dict) -> list:
    return (e.get("prompt_files") or [])[: e.get("speed_prompts", 0)]


# -------------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m decoding.model_pairs.train", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory (target/, draft/, MODEL_CARD.md)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="time budget of the two training runs together (target 62%%, draft 38%%); each "
                        "cosine schedule completes within its share (progress = max(step/steps, time/budget))")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--target-steps", type=int, default=None)
    parser.add_argument("--draft-steps", type=int, default=None)
    args = parser.parse_args(argv)

    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
    torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.target_steps is not None:
        preset = replace(preset, target_steps=args.target_steps)
    if args.draft_steps is not None:
        preset = replace(preset, draft_steps=args.draft_steps)
    device = _device(args.device)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    import tokenizers
    import transformers

    log = _read_log(out)
    if "tokenizer" in stages:
        log = {}
    command = "python -m decoding.model_pairs.train " + " ".join(sys.argv[1:] if argv is None else argv)
    log.setdefault("commands", []).append(command)
    log.update({
        "command": command,
        "seed": args.seed, "preset_name": args.preset, "preset": asdict(preset), "device": str(device),
        "torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
    })

    corpus = load_corpus(max_files=preset.max_files)
    log.update({
        "train_files": len(corpus.train), "held_out_files": corpus.held_out_paths, "skipped_files": corpus.skipped,
        "train_chars": sum(len(t) for _, t in corpus.train),
    })
    if "tokenizer" in stages:
        _log(f"tokenizer: training on {len(corpus.train)} files")
        tokenizer = train_tokenizer(corpus, preset.vocab_size, out)
    else:
        tokenizer = _load_tokenizer(out)
    log["vocab_size"] = len(tokenizer)
    needs_data = any(s in stages for s in ("target", "draft"))
    if needs_data or "tokenizer" in stages:
        train_stream = _encode(tokenizer, corpus.train)
        held_stream = _encode(tokenizer, corpus.held_out)
        log["train_tokens"], log["held_out_tokens"] = train_stream.numel(), held_stream.numel()
        _log(f"data: {train_stream.numel():,} training tokens, {held_stream.numel():,} held-out tokens")
    _write_log(out, log)

    for kind in ("target", "draft"):
        if kind in stages:
            budget_s = None
            if args.max_minutes:
                share = TARGET_TIME_SHARE if kind == "target" else 1 - TARGET_TIME_SHARE
                budget_s = 60 * args.max_minutes * share
            log[kind] = train_model(kind, preset, out, device, args.seed, budget_s, train_stream, held_stream,
                                    tokenizer)
            _write_log(out, log)
    if "eval" in stages:
        log["eval"] = evaluate_pair(out, preset, corpus, args.seed)
        log["eval"]["speed_prompts"] = min(preset.speed_prompts, log["eval"]["prompts"])
    log["wall_s_total"] = round(log.get("wall_s_total", 0) + time.time() - started, 1) if "tokenizer" not in stages \
        else round(time.time() - started, 1)
    _write_log(out, log)
    if "card" in stages:
        write_card(out, log)
    if (out / "tokenizer").exists() and "card" in stages:
        shutil.rmtree(out / "tokenizer")  # each model directory holds its own copy
    _log(f"done in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
