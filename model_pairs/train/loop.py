"""Training one model of the embedded pair (:func:`train_model`): the target on next-token prediction, the
draft distilled from the trained target (DistillSpec-style: KL divergence from the target's next-token law to the
draft's, mixed with a little of the data loss).

One AdamW loop serves both (:func:`_train_loop`): random windows of the training stream, linear warmup and a
cosine decay that completes within a step count or a time budget, gradient clipping, bfloat16 autocast where the
device supports it. Models are saved in float16 with a float32 ``config.dtype`` (:func:`_save_model`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from .presets import Preset, llama_config

__all__ = ["load_model", "log_message", "train_model"]


def log_message(message: str) -> None:
    """One timestamped progress line on stdout (every stage of the training script logs through it)."""
    print(f"[train {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _autocast_dtype(device: torch.device):
    """bfloat16 autocast on CUDA, and on CPUs with native bfloat16 matmul (AVX512-BF16 / AMX); else none."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        supported = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        supported = False
    return torch.bfloat16 if supported else None


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


def load_model(directory: Path, device: torch.device):
    """A saved model of the pair, in float32, on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).to(device).eval()


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
            log_message(f"{name}: time budget reached at step {step}/{steps}")
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
            log_message(f"{name} step {step}/{steps} ({progress:.0%}) loss {value:.4f} (smoothed {smooth:.4f}) "
                        f"{record} {tps:.0f} tok/s")
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
    """Train the ``kind`` model (``"target"`` or ``"draft"``, which needs ``out/target``) of ``preset``, save it
    under ``out/kind`` and return its record for the training log (losses, shape, history, size on disk)."""
    from transformers import LlamaForCausalLM

    amp = _autocast_dtype(device)
    shape = preset.target if kind == "target" else preset.draft
    torch.manual_seed(seed + (10 if kind == "target" else 20))
    config = llama_config(shape, len(tokenizer), max_positions=2048)
    model = LlamaForCausalLM(config).to(device)
    log_message(f"{kind}: {_num_params(model) / 1e6:.2f}M parameters, autocast {amp}")
    if kind == "target":
        loss = _LMLoss(model, train_stream, preset, device, amp)
        record = _train_loop(kind, model, loss, preset, preset.target_steps, preset.target_batch,
                             preset.target_lr, device, seed, budget_s)
    else:
        teacher = load_model(out / "target", device)
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
    log_message(f"{kind}: held-out loss {record['held_out_loss']}, train loss {record['train_loss']}")
    return record
