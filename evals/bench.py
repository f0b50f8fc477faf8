"""decoding-bench: speculative decoding speedup on a real draft/target pair, explained by its measured ceiling.

``decoding-bench`` (or ``python -m decoding.evals.bench``) with no arguments runs on the embedded pair shipped in
``model_pairs/embedded`` (a Python code model) on the CPU or the first GPU. On the same prompts, for every mode
(greedy, sampling at ``--temperature``), batch size and draft length ``g`` it times the methods below,
interleaved: every batch of prompts is run by every method in turn, in an order that rotates from batch to batch
and round to round, so background load hits every method alike (one untimed warm-up call per method first; the
device is synchronized around every timed call; with ``--rounds`` > 1 the median round counts):

- ``target``: the target's own ``generate`` (the baseline of every speedup);
- ``assisted g``: transformers' ``assistant_model=draft``, drafting exactly ``g`` tokens per step
  (``num_assistant_tokens_schedule="constant"``, no confidence threshold); batch 1 only, as transformers
  refuses larger batches;
- ``speculative g``: ``decoding.SpeculativeDecoding(draft, num_draft_tokens=g)``.

Per cell it reports tokens/s, speedup over the target, acceptance rate (``acc`` = accepted / drafted), the
per-token acceptance ``alpha`` (solved from ``tau`` so that the ceiling's expected tokens per step equal the
measured ones), mean accepted length ``tau`` (counts the bonus token), per-position acceptance, the measured
cost ratios ``c`` (draft forward / target forward) and ``v`` (target forward over g+1 tokens / over one), the
ceiling ``(1-a^(g+1)) / ((1-a)(g*c+v))`` with ``a = alpha`` (Leviathan et al.'s when v = 1) and the efficiency
(speedup / ceiling). Assisted cells borrow the strategy's acceptance at the same mode, batch and ``g``.
Greedy outputs are checked against the target's own, row by row. Timings are whole ``generate`` calls, prompt
encoding included, which speculation does not speed up: the JSON's ``ceiling_with_prefill`` is the ceiling of
such a call (measured prefill costs of both models added), which short generations approach rather than the
plain ceiling; use a larger ``--max-new-tokens`` to measure the decoding itself. The ceiling counts forward
passes only; the target's own ``generate`` also spends time per step outside them (logits processing, stopping
criteria, cache bookkeeping), once per token where speculation spends it once per step, so an efficiency
slightly above 1 is possible; the target cells' ``forwards_per_token`` (1.0: no such overhead) measures it.

Data parallel: ``accelerate launch --num_processes N -m decoding.evals.bench ...`` (on CPUs:
``accelerate launch --multi_gpu --num_processes N -m decoding.evals.bench --device cpu``, or ``torchrun``)
splits the prompts between processes; each measures its share on its own device, in step with the others, and
the main process prints one report: a method's rate is the new tokens of all processes over the time of the
slowest process (processes start every round together).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import decoding

from . import measure, report

__all__ = ["CATEGORIES", "DEFAULT_MIX", "Prompt", "load_prompt_set", "left_pad", "main", "make_batches",
           "measure_share", "combine", "parse_args", "run", "select_prompts"]

PROG = "decoding-bench"
PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
CATEGORIES = ("code_completion", "code_explanation", "summarization", "question_answering", "math", "retrieval")
# The default prompt mix: the embedded pair is a Python code model, so code prompts dominate.
DEFAULT_MIX = {"code_completion": 2, "code_explanation": 1, "retrieval": 1, "summarization": 1,
               "question_answering": 1, "math": 1}
MODES = ("greedy", "sample")
MAX_BATCH_SIZE = 256
MAX_DRAFT_LENGTH = 32
MAX_NEW_TOKENS = 8192
SYNTHETIC_KEYS = {"layers": "num_layers", "hidden": "hidden_size", "vocab": "vocab_size",
                  "intermediate": "intermediate_size", "damping": "damping", "head_scale": "head_scale"}
SYNTHETIC_DEFAULTS = {"num_layers": 8, "hidden_size": 512, "vocab_size": 8192, "intermediate_size": 2048}


EPILOG = """examples:
  decoding-bench                                   the embedded pair, CPU or first GPU (under 2 minutes on 2 cores)
  decoding-bench --json out.json --plot out.png    also write the results and a plot (plot: pip install matplotlib)
  decoding-bench --target qwen2.5-coder-7b --dtype bfloat16 --batch-sizes 1,8 --draft-lengths 3,5,7
  decoding-bench --target /models/llama-8b --draft /models/llama-1b --load-in-4bit
  decoding-bench --target llama-3.1-8b-instruct --device-map auto --chat-template    (one target over all GPUs)
  accelerate launch --num_processes 4 -m decoding.evals.bench --target qwen2.5-7b-instruct --dtype bfloat16
  accelerate launch --multi_gpu --num_processes 2 -m decoding.evals.bench --device cpu    (two CPU processes)
"""


class UsageError(Exception):
    """A bad command line: reported as one line on stderr, exit status 2."""


class SetupError(Exception):
    """Bad input found while loading models or prompts: reported as one line on stderr, exit status 1."""


# ----------------------------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    """One benchmark prompt; ``ids`` (``# [length]``) once tokenized."""

    id: str
    category: str
    text: str
    ids: torch.Tensor | None = None


def load_prompt_set(path: str | Path | None = None) -> list[Prompt]:
    """Prompts of a ``.jsonl`` file, or of every ``*.jsonl`` file in a folder (default: the shipped set).

    Each line is a JSON object with string fields ``id``, ``category`` and ``prompt``. Raises ``ValueError``
    (file and line named) for a malformed line, ``OSError`` for a missing file.
    """
    path = Path(path) if path is not None else PROMPTS_DIR
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise ValueError(f"no *.jsonl prompt files in {path}")
    prompts, seen = [], set()
    for file in files:
        with open(file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record.get(k)
                                                       for k in ("id", "category", "prompt")):
                raise ValueError(f"{file}:{number}: expected an object with string fields id, category and prompt")
            if record["id"] in seen:
                raise ValueError(f"{file}:{number}: duplicate prompt id {record['id']!r}")
            seen.add(record["id"])
            prompts.append(Prompt(record["id"], record["category"], record["prompt"]))
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def select_prompts(prompts: list[Prompt], categories: Sequence[str] | None = None,
                   per_category: int | None = None) -> list[Prompt]:
    """The first ``per_category`` prompts of each category in ``categories`` (default: all present).

    Without ``per_category``, the shipped set's :data:`DEFAULT_MIX` decides how many of its categories to take
    (1 of a category it does not name); other prompt sets take 1 of each. Prompts are interleaved across
    categories, so batches mix them.
    """
    present = list(dict.fromkeys(p.category for p in prompts))
    if categories is None:
        categories = present
    unknown = [c for c in categories if c not in present]
    if unknown:
        raise ValueError(f"unknown categor{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                         f"this prompt set has: {', '.join(present)}")
    groups = []
    for category in categories:
        count = per_category if per_category is not None else DEFAULT_MIX.get(category, 1)
        groups.append([p for p in prompts if p.category == category][:count])
    selected = []
    for k in range(max(len(g) for g in groups)):
        selected += [g[k] for g in groups if k < len(g)]
    return selected


def left_pad(prompts: list[torch.Tensor], pad_token_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad 1-D prompts into ``input_ids, attention_mask  # [b, longest]``."""
    width = max(p.numel() for p in prompts)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.int64)
    mask = torch.zeros(len(prompts), width, dtype=torch.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - prompt.numel():] = prompt
        mask[row, width - prompt.numel():] = 1
    return ids, mask


@dataclass
class Batch:
    ids: torch.Tensor  # [b, width] left-padded
    mask: torch.Tensor  # [b, width]
    prompts: list[int]  # index into the prompt list, per row


def make_batches(prompts: list[torch.Tensor], batch_size: int, device, pad_token_id: int = 0) -> list[Batch]:
    """``ceil(len(prompts) / batch_size)`` full batches; the last one wraps around to the first prompts."""
    out = []
    for k in range(-(-len(prompts) // batch_size)):
        rows = [(k * batch_size + i) % len(prompts) for i in range(batch_size)]
        ids, mask = left_pad([prompts[r] for r in rows], pad_token_id)
        out.append(Batch(ids.to(device), mask.to(device), rows))
    return out


# ----------------------------------------------------------------------------------------------- the pair


@dataclass
class Pair:
    """A loaded target and draft, and how to turn prompt text into ids for them."""

    target: object
    draft: object
    name: str
    draft_name: str
    encode: Callable[[str], list[int]]
    pad_token_id: int
    eos_token_ids: list[int]
    tokenizer: object = None


def _eos_ids(model, tokenizer=None) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def synthetic_pair(spec: str, dtype: torch.dtype | None, device, seed: int) -> Pair:
    """The damped synthetic pair (:func:`decoding.model_pairs.synthetic.damped_pair`) of a ``--synthetic`` spec
    such as ``"layers=2,hidden=32,vocab=96"``; prompt text is mapped to ids byte by byte."""
    from ..model_pairs.synthetic import damped_pair

    settings = dict(SYNTHETIC_DEFAULTS)
    settings.update(parse_synthetic(spec))
    if "hidden_size" in parse_synthetic(spec) and "intermediate_size" not in parse_synthetic(spec):
        settings.pop("intermediate_size")  # Llama's ratio for a non-default width
    target, draft = damped_pair(**settings, seed=seed, dtype=dtype or torch.float32, device=device)
    vocab = settings["vocab_size"]

    def encode(text: str) -> list[int]:
        return [1 + b % (vocab - 1) for b in text.encode("utf-8")]

    shape = ", ".join(f"{k}={v}" for k, v in settings.items())
    return Pair(target, draft, f"synthetic damped pair ({shape})", "synthetic one-layer draft", encode, 0, [])


def parse_synthetic(spec: str) -> dict:
    """``"layers=2,hidden=32"`` -> ``{"num_layers": 2, "hidden_size": 32}`` (``ValueError`` on bad input)."""
    settings = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or key.strip() not in SYNTHETIC_KEYS:
            raise ValueError(f"bad --synthetic item {item!r}: expected KEY=VALUE with KEY in {', '.join(SYNTHETIC_KEYS)}")
        name = SYNTHETIC_KEYS[key.strip()]
        try:
            number = float(value) if name in ("damping", "head_scale") else int(value)
        except ValueError:
            raise ValueError(f"bad --synthetic value {item!r}: expected a number") from None
        if name not in ("damping", "head_scale") and number < 1:
            raise ValueError(f"bad --synthetic value {item!r}: must be >= 1")
        settings[name] = number
    return settings


def hub_pair(args, device) -> Pair:
    """Load ``--target``/``--draft`` through :func:`decoding.model_pairs.load_pair` (registry names, hub ids or
    local folders)."""
    from ..model_pairs import load_pair

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    device_map = args.device_map if args.device_map is not None else str(device)
    # The draft goes to the target's input device (load_pair's default), where the strategy needs it.
    loaded = load_pair(args.target, args.draft, dtype=dtype, device_map=device_map,
                       load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit)
    target, draft, tokenizer = loaded.target, loaded.draft, loaded.tokenizer
    eos = _eos_ids(target, tokenizer)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = target.generation_config.pad_token_id
    if pad is None:
        pad = eos[0] if eos else 0
    pad = int(pad[0] if isinstance(pad, (list, tuple)) else pad)
    spec = loaded.pair  # the registry entry, when the pair came from the registry unchanged
    name = spec.name if spec is not None else str(args.target)
    draft_name = f"{spec.name} draft" if spec is not None else str(args.draft or f"{args.target} draft")

    def encode(text: str) -> list[int]:
        if args.chat_template:
            return list(tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                                      add_generation_prompt=True, return_dict=False))
        return list(tokenizer(text)["input_ids"])

    return Pair(target, draft, name, str(draft_name), encode, pad, eos, tokenizer)


def tokenize_prompts(pair: Pair, prompts: list[Prompt], max_prompt_tokens: int) -> list[Prompt]:
    """Fill ``ids`` of every prompt, keeping its last ``max_prompt_tokens`` tokens."""
    for prompt in prompts:
        ids = pair.encode(prompt.text)[-max_prompt_tokens:]
        if not ids:
            raise ValueError(f"prompt {prompt.id} has no tokens")
        prompt.ids = torch.tensor(ids, dtype=torch.int64)
    return prompts


# ----------------------------------------------------------------------------------------------- methods


@dataclass
class Method:
    """One column of the benchmark: how to generate a batch, and what it measured."""

    name: str
    kind: str  # "target" | "assisted" | "speculative"
    g: int | None
    generate: Callable  # (ids, mask) -> LongTensor [b, width + new]
    strategy: object = None
    seconds: list = field(default_factory=list)  # per round, all batches of this process
    tokens: list = field(default_factory=list)  # new tokens per round
    stats: dict = field(default_factory=dict)  # acceptance counters, all timed rounds
    per_category: dict = field(default_factory=dict)  # category -> counters (batch 1 only)
    rows: list = field(default_factory=list)  # new token ids per row, first timed round


def generation_kwargs(mode: str, max_new_tokens: int, pad_token_id: int, temperature: float) -> dict:
    """What every method passes to ``generate`` in ``mode``: pure temperature sampling, or greedy."""
    common = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_token_id}
    if mode == "greedy":
        return {**common, "do_sample": False}
    return {**common, "do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}


def make_methods(target, draft, batch_size: int, draft_lengths: Sequence[int], kwargs: dict,
                 assisted: bool = True) -> list[Method]:
    """``target`` first, then for each ``g``: ``assisted g`` (batch 1) and ``speculative g``."""
    methods = [Method("target", "target", None, lambda ids, mask: target.generate(ids, attention_mask=mask, **kwargs))]
    for g in draft_lengths:
        if assisted and batch_size == 1:
            methods.append(Method(f"assisted g={g}", "assisted", g, _assisted(target, draft, g, kwargs)))
        strategy = decoding.SpeculativeDecoding(draft, num_draft_tokens=g)
        methods.append(Method(
            f"speculative g={g}", "speculative", g,
            lambda ids, mask, s=strategy: target.generate(ids, attention_mask=mask, strategy=s, **kwargs),
            strategy,
        ))
    return methods


def _assisted(target, draft, g: int, kwargs: dict):
    def generate(ids, mask):
        # transformers reads these from the draft's own generation config only. A confidence threshold of 0
        # disables early stopping of the draft, so that it proposes exactly g tokens, like the strategy.
        config = draft.generation_config
        config.num_assistant_tokens = g
        config.num_assistant_tokens_schedule = "constant"
        config.assistant_confidence_threshold = 0.0
        return target.generate(ids, attention_mask=mask, assistant_model=draft, **kwargs)

    return generate


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """A progress bar on stderr: rich's when stderr is a terminal (tqdm's without rich), else plain lines."""

    def __init__(self, total: int, enabled: bool = True):
        self.enabled, self.total, self.done = enabled, total, 0
        self._rich = self._tqdm = None
        self._last_line = 0.0
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._task = self._rich.add_task("starting", total=total)
            self._rich.start()
        except ImportError:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def describe(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, description=text)
        elif self._tqdm is not None:
            self._tqdm.set_description_str(text)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.advance(self._task, n)
        elif self._tqdm is not None:
            self._tqdm.update(n)

    def log(self, text: str) -> None:
        """A line that stays (plain mode only: the bar shows the same information live)."""
        if self.enabled and self._rich is None and self._tqdm is None:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self._tqdm is not None:
            self._tqdm.close()


def work_units(num_prompts: int, batch_sizes, draft_lengths, modes, rounds: int, assisted: bool = True) -> int:
    """Number of generate calls (warm-up included) and cost measurements a run makes, for the progress bar."""
    total = 0
    for batch_size in batch_sizes:
        batches = -(-num_prompts // batch_size)
        methods = 1 + len(draft_lengths) * (2 if assisted and batch_size == 1 else 1)
        total += len(modes) * methods * (1 + rounds * batches) + 1  # + 1: the cost measurement
    return total


# ----------------------------------------------------------------------------------------------- measuring


class _Sync:
    """Barriers between processes (no-ops in a single process)."""

    def __init__(self, state=None):
        self.state = state if state is not None and state.num_processes > 1 else None

    def __call__(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()


def measure_share(pair: Pair, prompts: list[Prompt], *, batch_sizes: Sequence[int], draft_lengths: Sequence[int],
                  modes: Sequence[str] = ("greedy",), max_new_tokens: int = 64, temperature: float = 0.7,
                  rounds: int = 3, cost_repeats: int = 31, seed: int = 0, assisted: bool = True,
                  warmup_tokens: int | None = 8, state=None, progress: Progress | None = None) -> dict:
    """Measure every (mode, batch size, method) on this process's ``prompts``; returns raw, JSON-able results.

    ``{"blocks": [{"mode", "batch_size", "methods": [{"name", "kind", "g", "seconds", "tokens", "stats",
    "per_category", "rows"}]}], "costs": {batch_size: cost_ratios(...) + context_length}, "device_name",
    "prompt_tokens"}``: ``seconds``/``tokens`` per round, ``rows`` the new ids of every row in round 0
    (greedy blocks only). :func:`combine` turns the results of all processes into report cells.
    """
    target, draft = pair.target, pair.draft
    device = target.device
    decoding.enable(target)
    progress = progress or Progress(0, enabled=False)
    sync = _Sync(state)
    ids = [p.ids for p in prompts]
    categories = [p.category for p in prompts]
    context_length = round(statistics.mean(p.numel() for p in ids) + max_new_tokens / 2)
    out = {"blocks": [], "costs": {}, "device_name": measure.device_name(device),
           "prompt_tokens": [p.numel() for p in ids]}
    with torch.no_grad():
        for batch_size in batch_sizes:
            data = make_batches(ids, batch_size, device, pair.pad_token_id)
            for mode in modes:
                kwargs = generation_kwargs(mode, max_new_tokens, pair.pad_token_id, temperature)
                methods = make_methods(target, draft, batch_size, draft_lengths, kwargs, assisted)
                label = f"{mode}, batch {batch_size}"
                progress.describe(f"{label}: warm-up")
                progress.log(f"{label}: {len(data)} batch(es) x {rounds} round(s) of "
                             + ", ".join(m.name for m in methods))
                warm = dict(kwargs, max_new_tokens=min(max_new_tokens, warmup_tokens or max_new_tokens))
                warm_methods = make_methods(target, draft, batch_size, draft_lengths, warm, assisted)
                for method in warm_methods:  # untimed
                    torch.manual_seed(seed)
                    method.generate(data[0].ids, data[0].mask)
                    progress.advance()
                for round_ in range(rounds):
                    sync()  # processes run each round in step
                    for method in methods:
                        method.seconds.append(0.0)
                        method.tokens.append(0)
                    for b, batch in enumerate(data):
                        progress.describe(f"{label}, round {round_ + 1}/{rounds}, batch {b + 1}/{len(data)}")
                        shift = (round_ + b) % len(methods)  # every method takes every place in the order
                        for method in methods[shift:] + methods[:shift]:
                            _time_call(method, batch, categories, round_, b, mode, seed, pair.eos_token_ids)
                            progress.advance()
                    progress.log(f"{label}, round {round_ + 1}/{rounds}: " + ", ".join(
                        f"{m.name} {m.tokens[-1] / m.seconds[-1]:.1f} tok/s" for m in methods))
                out["blocks"].append({"mode": mode, "batch_size": batch_size, "methods": [
                    {"name": m.name, "kind": m.kind, "g": m.g, "seconds": m.seconds, "tokens": m.tokens,
                     "stats": m.stats, "per_category": m.per_category, "rows": m.rows} for m in methods]})
            progress.describe(f"batch {batch_size}: measuring c and v ({context_length}-token cache)")
            progress.log(f"batch {batch_size}: measuring c and v ({context_length}-token cache, {cost_repeats} repeats)")
            sync()
            cost = measure.cost_ratios(target, draft, batch_size, context_length, draft_lengths, repeats=cost_repeats)
            prompt_length = round(statistics.mean(p.numel() for p in ids))
            prefill = measure.prefill_ratios(target, draft, batch_size, prompt_length,
                                             repeats=max(3, cost_repeats // 3))
            progress.advance()
            out["costs"][batch_size] = {"c": cost["c"], "v": {g: v for g, v in cost["v"].items()},
                                        "seconds": {**cost["seconds"], **{f"{k}@prompt": x for k, x in
                                                                          prefill["seconds"].items()}},
                                        "context_length": context_length, "prompt_length": prompt_length,
                                        "prefill_target": prefill["target"], "prefill_draft": prefill["draft"]}
    return out


def _time_call(method: Method, batch: Batch, categories, round_: int, b: int, mode: str, seed: int, eos) -> None:
    """One timed ``generate`` of ``batch``, added to the method's current round; outputs and counters kept."""
    device = batch.ids.device
    if mode != "greedy":
        torch.manual_seed(seed + 7919 * round_ + b)  # the same seed for every method
    measure.synchronize(device)
    start = time.perf_counter()
    output = method.generate(batch.ids, batch.mask)
    measure.synchronize(device)
    method.seconds[-1] += time.perf_counter() - start
    counts = measure.new_token_counts(output, batch.ids.shape[1], eos)
    method.tokens[-1] += sum(counts)
    if round_ == 0 and mode == "greedy":
        width = batch.ids.shape[1]
        method.rows += [output[r, width:width + n].tolist() for r, n in enumerate(counts)]
    if method.strategy is not None:
        measure.merge_stats(method.stats, method.strategy.stats)
        if batch.ids.shape[0] == 1:
            measure.merge_stats(method.per_category.setdefault(categories[batch.prompts[0]], {}),
                                method.strategy.stats)


# ----------------------------------------------------------------------------------------------- combining


def combine(shares: list[dict], max_new_tokens: int | None = None) -> tuple[list[dict], dict, list[dict]]:
    """Report cells, costs and greedy checks from the :func:`measure_share` results of every process.

    Per round, a method's rate is the new tokens of all processes over the slowest process's seconds for that
    method (the processes start every round together); its tokens/s is the median over rounds. ``c`` and ``v``
    are means over processes; acceptance counters are summed. With ``max_new_tokens``, draft cells also get
    ``ceiling_with_prefill`` (:func:`decoding.evals.measure.prefill_ceiling`, for that many new tokens per row)
    and target cells ``forwards_per_token``.
    """
    costs = {}
    for batch_size in shares[0]["costs"]:
        entries = [s["costs"][batch_size] for s in shares]
        gs = list(entries[0]["v"])
        costs[batch_size] = {
            "c": statistics.mean(e["c"] for e in entries),
            "v": {g: statistics.mean(e["v"][g] for e in entries) for g in gs},
            "seconds": {k: statistics.mean(e["seconds"][k] for e in entries) for k in entries[0]["seconds"]},
            "context_length": round(statistics.mean(e["context_length"] for e in entries)),
            "prompt_length": round(statistics.mean(e["prompt_length"] for e in entries)),
            "prefill_target": statistics.mean(e["prefill_target"] for e in entries),
            "prefill_draft": statistics.mean(e["prefill_draft"] for e in entries),
        }
        if len(entries) > 1:
            costs[batch_size]["per_process"] = [{"c": e["c"], "v": e["v"]} for e in entries]
    cells, checks = [], []
    for index, block in enumerate(shares[0]["blocks"]):
        mode, batch_size = block["mode"], block["batch_size"]
        per_method = [[s["blocks"][index]["methods"][m] for s in shares] for m in range(len(block["methods"]))]
        measured = [_measured(parts) for parts in per_method]
        base_rate = measured[0]["tokens_per_s"]
        cost = costs[batch_size]
        acceptance = {m["g"]: m for m in measured if m["kind"] == "speculative"}
        for m in measured:
            cell = {"mode": mode, "batch_size": batch_size, "method": m["kind"], "name": m["name"],
                    "num_draft_tokens": m["g"], "tokens_per_s": m["tokens_per_s"],
                    "tokens_per_s_rounds": m["rounds"], "new_tokens_per_round": m["tokens"],
                    "speedup": m["tokens_per_s"] / base_rate if base_rate else float("nan")}
            if m["kind"] == "target" and max_new_tokens is not None and m["tokens_per_s"] > 0:
                # What one generated token costs target alone, in cached target forwards, prompt encoding left out:
                # above 1 by the per-step work of generate's loop, which the ceiling does not count.
                seconds_per_step = batch_size * len(shares) / m["tokens_per_s"]
                cell["forwards_per_token"] = (seconds_per_step / cost["seconds"]["target_1"]
                                              - cost["prefill_target"] / max_new_tokens)
            if mode == "greedy":
                cell.update(_equality(m["rows"], measured[0]["rows"]))
            else:
                cell.update({"matches_target": None, "rows_matching_target": "sampled"})
            g = m["g"]
            if g is not None:
                summary = measure.acceptance_summary(acceptance[g]["stats"], g)
                ceil = measure.ceiling(summary["alpha"], g, cost["c"], cost["v"][g])
                cell.update(summary)
                cell.update({"c": cost["c"], "v": cost["v"][g], "ceiling": ceil,
                             "ceiling_v1": measure.ceiling(summary["alpha"], g, cost["c"], 1.0),
                             "efficiency": measure.efficiency(cell["speedup"], ceil)})
                if max_new_tokens is not None:
                    cell["ceiling_with_prefill"] = measure.prefill_ceiling(
                        summary["alpha"], g, cost["c"], cost["v"][g], cost["prefill_target"], cost["prefill_draft"],
                        max_new_tokens)
                if m["kind"] == "assisted":
                    cell["acceptance_source"] = "speculative strategy at the same mode, batch and g"
                elif m["per_category"]:
                    cell["per_category"] = {
                        cat: {k: v for k, v in measure.acceptance_summary(t, g).items()
                              if k in ("acceptance_rate", "alpha", "mean_accepted_length", "steps")}
                        for cat, t in m["per_category"].items()}
            cells.append(cell)
            if mode == "greedy" and m["kind"] != "target":
                checks.append({k: cell[k] for k in ("mode", "batch_size", "name", "matches_target",
                                                    "rows_matching_target", "mean_agreeing_prefix")})
    for mode in dict.fromkeys(c["mode"] for c in cells):
        for batch_size in dict.fromkeys(c["batch_size"] for c in cells):
            spec = [c for c in cells if c["mode"] == mode and c["batch_size"] == batch_size
                    and c["method"] == "speculative"]
            if spec:
                max(spec, key=lambda c: c["speedup"])["best"] = True
    return cells, costs, checks


def _measured(parts: list[dict]) -> dict:
    """One method's figures over all processes."""
    rounds = len(parts[0]["seconds"])
    tokens = [sum(p["tokens"][r] for p in parts) for r in range(rounds)]
    seconds = [max(p["seconds"][r] for p in parts) for r in range(rounds)]
    rates = [t / s if s > 0 else float("nan") for t, s in zip(tokens, seconds)]
    per_category: dict = {}
    for part in parts:
        for category, totals in part["per_category"].items():
            measure.merge_stats(per_category.setdefault(category, {}), totals)
    return {"name": parts[0]["name"], "kind": parts[0]["kind"], "g": parts[0]["g"],
            "tokens_per_s": statistics.median(rates), "rounds": rates, "tokens": statistics.median(tokens),
            "stats": measure.merge_totals(p["stats"] for p in parts), "per_category": per_category,
            "rows": [row for p in parts for row in p["rows"]]}


def _equality(rows: list[list[int]], reference: list[list[int]]) -> dict:
    equal = sum(a == b for a, b in zip(rows, reference))
    differing = [(a, b) for a, b in zip(rows, reference) if a != b]
    prefix = None
    if differing:
        prefix = statistics.mean(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                                 for a, b in differing)
    return {"matches_target": equal == len(reference) and len(rows) == len(reference),
            "rows_matching_target": f"{equal}/{len(reference)}", "mean_agreeing_prefix": prefix}


# ----------------------------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block: raised to main, which prints it
        raise UsageError(message)


def _int_list(name: str, maximum: int):
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.replace(" ", "").split(",") if x]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one {name}, got {text!r}")
        bad = [v for v in values if not 1 <= v <= maximum]
        if bad:
            raise argparse.ArgumentTypeError(f"{name} {bad[0]} is out of range: use 1 to {maximum}")
        return list(dict.fromkeys(values))

    return parse


def _names(choices: Sequence[str], what: str):
    def parse(text: str) -> list[str]:
        values = [x for x in text.replace(" ", "").split(",") if x]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            shown = bad[0] if bad else text
            raise argparse.ArgumentTypeError(f"unknown {what} {shown!r}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(values))

    return parse


def _categories(text: str) -> list[str]:
    values = [x for x in text.replace(" ", "").split(",") if x]
    if not values:
        raise argparse.ArgumentTypeError("expected comma-separated category names")
    return list(dict.fromkeys(values))


def _positive(kind=int, maximum=None):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0 or (maximum is not None and value > maximum) or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text} is out of range: use a value > 0"
                                             + (f" and <= {maximum}" if maximum is not None else ""))
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    pair = parser.add_argument_group("model pair")
    pair.add_argument("--target", default="embedded",
                      help="registry name (see decoding.model_pairs.names()), hub id or local folder (default: embedded, "
                           "the pair shipped in model_pairs/embedded)")
    pair.add_argument("--draft", default=None, help="draft hub id or local folder (default: the registry's draft)")
    pair.add_argument("--synthetic", nargs="?", const="", default=None, metavar="SPEC",
                      help="use the synthetic damped pair instead, optionally shaped, e.g. layers=2,hidden=32,vocab=96 "
                           f"(keys: {', '.join(SYNTHETIC_KEYS)})")
    quant = pair.add_mutually_exclusive_group()
    quant.add_argument("--load-in-8bit", action="store_true", help="8-bit target through bitsandbytes (extra quant)")
    quant.add_argument("--load-in-4bit", action="store_true", help="4-bit target through bitsandbytes (extra quant)")
    pair.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16", "float64"],
                      help="parameter dtype (default: auto, the checkpoint's; float32 for --synthetic)")
    pair.add_argument("--device", default=None,
                      help="torch device (default: cuda if available, else cpu; each process's own under accelerate)")
    pair.add_argument("--device-map", default=None,
                      help="device_map of the target, e.g. auto to split it over GPUs (single process only)")
    pair.add_argument("--chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template")
    pair.add_argument("--threads", type=_positive(int, 4096), default=None,
                      help="torch CPU threads (default: torch's, one per core; under accelerate each process's own)")

    grid = parser.add_argument_group("grid")
    grid.add_argument("--batch-sizes", type=_int_list("batch size", MAX_BATCH_SIZE), default=[1, 4],
                      help="comma-separated batch sizes (default: 1,4)")
    grid.add_argument("--draft-lengths", type=_int_list("draft length", MAX_DRAFT_LENGTH), default=[3, 4],
                      help="comma-separated draft lengths g (default: 3,4)")
    grid.add_argument("--modes", type=_names(MODES, "mode"), default=list(MODES),
                      help="greedy, sample or both (default: greedy,sample)")
    grid.add_argument("--temperature", type=_positive(float, 100.0), default=0.7,
                      help="temperature of sample mode (default: %(default)s)")
    grid.add_argument("--max-new-tokens", type=_positive(int, MAX_NEW_TOKENS), default=32,
                      help="new tokens per row, fewer where the model emits EOS (default: %(default)s)")
    grid.add_argument("--no-assisted", dest="assisted", action="store_false",
                      help="skip transformers' assistant_model= (batch 1)")

    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt-set", type=Path, default=None, metavar="PATH",
                         help="a .jsonl file or folder of them (lines: {id, category, prompt}); default: the shipped set")
    prompts.add_argument("--categories", type=_categories, default=None,
                         help=f"comma-separated categories (shipped: {', '.join(CATEGORIES)}); default: all")
    prompts.add_argument("--prompts-per-category", type=_positive(int, 10_000), default=None,
                         help="prompts taken from each category (default: "
                              + ", ".join(f"{k} {v}" for k, v in DEFAULT_MIX.items()) + ")")
    prompts.add_argument("--max-prompt-tokens", type=_positive(int, 1_000_000), default=256,
                         help="keep the last N tokens of each prompt (default: %(default)s)")

    timing = parser.add_argument_group("timing and output")
    timing.add_argument("--rounds", type=_positive(int, 1000), default=1,
                        help="timing rounds over all prompts, the median counts (default: %(default)s; 3 gives "
                             "steadier figures)")
    timing.add_argument("--cost-repeats", type=_positive(int, 10_000), default=31,
                        help="repetitions of each forward when measuring c and v (default: %(default)s)")
    timing.add_argument("--seed", type=int, default=0,
                        help="seed of sampling and of the synthetic pair's weights (default: %(default)s)")
    timing.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the results as JSON here")
    timing.add_argument("--plot", type=Path, default=None, metavar="PATH",
                        help="write a PNG of speedup against draft length here (needs matplotlib)")
    timing.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    """Parse and check the command line; raises :class:`UsageError` with a one-line message."""
    args = build_parser().parse_args(argv)
    if args.synthetic is not None:
        try:
            parse_synthetic(args.synthetic)
        except ValueError as error:
            raise UsageError(str(error)) from None
        if args.load_in_8bit or args.load_in_4bit:
            raise UsageError("--load-in-8bit/--load-in-4bit apply to loaded checkpoints, not to --synthetic")
    if args.plot is not None:
        try:
            report.check_plotting()
        except ImportError as error:
            raise UsageError(str(error)) from None
    if args.plot is not None and args.plot.suffix.lower() not in ("", ".png"):
        raise UsageError(f"--plot writes a PNG: give a .png path, not {args.plot}")
    return args


# ----------------------------------------------------------------------------------------------- run


def run(argv=None) -> dict:
    """Run the benchmark from command-line arguments and return the results (on every process).

    Raises :class:`UsageError` for a bad command line and :class:`SetupError` for models or prompts that
    cannot be loaded; :func:`main` turns both into one-line messages.

    The result (and ``--json``) has keys ``meta`` (date, git commit, library versions, device name, number of
    processes, pair, parameter counts, arguments), ``prompts`` (id, category, tokens), ``costs`` (per batch
    size: ``c``, ``v`` per g, median seconds of each forward, ``context_length``, ``prompt_length`` and the
    prefill costs ``prefill_target``/``prefill_draft`` in target forwards), ``checks`` (greedy equality per
    cell), ``cells`` (one per mode, batch size and method: ``tokens_per_s``, ``speedup``, ``matches_target``;
    for the target ``forwards_per_token``; for draft methods ``acceptance_rate``, ``alpha``,
    ``mean_accepted_length``, ``per_position_acceptance``, ``c``, ``v``, ``ceiling``, ``ceiling_with_prefill``,
    ``efficiency``, and ``per_category`` acceptance for speculative cells at batch 1) and ``summary`` (the best
    draft length per mode and batch size).
    """
    args = parse_args(argv)
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()  # no per-call generation warnings between progress lines
    if args.quiet:
        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    try:
        return _run(args)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _device(args, state) -> torch.device:
    if state.num_processes > 1:
        return state.device
    if args.device is not None:
        return torch.device(args.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _state(args):
    from accelerate import PartialState

    cpu = (args.device or "").startswith("cpu") or not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def _run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    try:
        device = torch.device(args.device) if args.device is not None else None
    except RuntimeError as error:
        raise UsageError(f"bad --device {args.device!r}: {error}") from None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    state = _state(args)
    if state.num_processes > 1 and args.device_map is not None:
        raise UsageError("--device-map splits one model over devices; it cannot be combined with data parallel")
    device = _device(args, state)
    if not state.is_main_process:
        import transformers

        transformers.utils.logging.disable_progress_bar()

    try:
        prompts = select_prompts(load_prompt_set(args.prompt_set), args.categories, args.prompts_per_category)
    except (OSError, ValueError) as error:
        raise SetupError(str(error)) from None
    if len(prompts) < state.num_processes:
        raise UsageError(f"{len(prompts)} prompts cannot be split over {state.num_processes} processes: "
                         "raise --prompts-per-category")
    try:
        if args.synthetic is not None:
            dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
            pair = synthetic_pair(args.synthetic, dtype, device, args.seed)
        else:
            pair = hub_pair(args, device)
        tokenize_prompts(pair, prompts, args.max_prompt_tokens)
    except (OSError, ValueError, ImportError) as error:
        raise SetupError(_one_line(error)) from None

    with state.split_between_processes(prompts) as share:
        share = list(share)
    progress = Progress(work_units(len(share), args.batch_sizes, args.draft_lengths, args.modes, args.rounds,
                                   args.assisted), enabled=not args.quiet and state.is_main_process)
    try:
        raw = measure_share(pair, share, batch_sizes=args.batch_sizes, draft_lengths=args.draft_lengths,
                            modes=args.modes, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                            rounds=args.rounds, cost_repeats=args.cost_repeats, seed=args.seed,
                            assisted=args.assisted, state=state, progress=progress)
    finally:
        progress.close()
    shares = _gather(raw, state)
    if state.num_processes > 1:
        state.destroy_process_group()
    cells, costs, checks = combine(shares, args.max_new_tokens)
    result = {
        "meta": _meta(args, pair, state, shares, time.perf_counter() - started),
        "prompts": [{"id": p.id, "category": p.category, "tokens": p.ids.numel()} for p in prompts],
        "costs": {str(b): {**v, "v": {str(g): x for g, x in v["v"].items()}} for b, v in costs.items()},
        "checks": checks,
        "cells": cells,
        "summary": _summary(cells),
    }
    if state.is_main_process:
        _print_report(result, args)
        if args.json is not None:
            print(f"wrote {report.write_json(result, args.json)}")
        if args.plot is not None:
            print(f"wrote {report.plot_speedup(cells, args.plot, _title(result, 'speedup'))}")
    return result


def _gather(raw: dict, state) -> list[dict]:
    if state.num_processes == 1:
        return [raw]
    from accelerate.utils import gather_object

    return gather_object([raw])


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def _meta(args, pair: Pair, state, shares: list[dict], seconds: float) -> dict:
    target, draft = pair.target, pair.draft
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": measure.git_commit(),
        **measure.library_versions(),
        "decoding": decoding.__version__,
        "device": str(target.device),
        "device_name": shares[0]["device_name"],
        "device_names": [s["device_name"] for s in shares],
        "num_processes": state.num_processes,
        "torch_threads": torch.get_num_threads(),
        "target": pair.name,
        "draft": pair.draft_name,
        "dtype": str(next(target.parameters()).dtype).removeprefix("torch."),
        "quantization": "8bit" if args.load_in_8bit else "4bit" if args.load_in_4bit else None,
        "target_parameters": sum(p.numel() for p in target.parameters()),
        "draft_parameters": sum(p.numel() for p in draft.parameters()),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "benchmark_seconds": seconds,
    }


def _summary(cells: list[dict]) -> list[dict]:
    out = []
    for cell in cells:
        if not cell.get("best"):
            continue
        assisted = next((c for c in cells if c["mode"] == cell["mode"] and c["batch_size"] == cell["batch_size"]
                         and c["method"] == "assisted" and c["num_draft_tokens"] == cell["num_draft_tokens"]), None)
        target = next(c for c in cells if c["mode"] == cell["mode"] and c["batch_size"] == cell["batch_size"]
                      and c["method"] == "target")
        out.append({"mode": cell["mode"], "batch_size": cell["batch_size"], "best_draft_length": cell["num_draft_tokens"],
                    "speedup": cell["speedup"], "ceiling": cell["ceiling"], "efficiency": cell["efficiency"],
                    "ceiling_with_prefill": cell.get("ceiling_with_prefill"),
                    "alpha": cell["alpha"], "assisted_speedup": assisted["speedup"] if assisted else None,
                    "target_forwards_per_token": target.get("forwards_per_token")})
    return out


def _title(result: dict, what: str) -> str:
    meta = result["meta"]
    processes = f", {meta['num_processes']} processes" if meta["num_processes"] > 1 else ""
    args = meta["arguments"]
    return (f"{what}: {meta['target']} ({meta['target_parameters'] / 1e6:.1f}M target, "
            f"{meta['draft_parameters'] / 1e6:.1f}M draft, {meta['dtype']}), {args['max_new_tokens']} new tokens, "
            f"{len(result['prompts'])} prompts, {meta['device_name']}{processes}")


def _print_report(result: dict, args) -> None:
    cells = result["cells"]
    for mode in dict.fromkeys(c["mode"] for c in cells):
        what = "greedy" if mode == "greedy" else f"sampling, temperature {args.temperature}"
        report.print_table([c for c in cells if c["mode"] == mode], _title(result, what))
        if mode == "greedy":
            report.print_checks([c for c in result["checks"] if c["mode"] == mode])
        print()
    categories = _category_lines(cells)
    if categories:
        print("\n".join(categories))
        print()
    for s in result["summary"]:
        assisted = "" if s["assisted_speedup"] is None else \
            f"; assistant_model= at g={s['best_draft_length']}: {s['assisted_speedup']:.2f}x"
        prefill = "" if s["ceiling_with_prefill"] is None else f" ({s['ceiling_with_prefill']:.2f}x counting prefill)"
        overhead = "" if s["target_forwards_per_token"] is None else \
            f"; target alone: {s['target_forwards_per_token']:.2f} forwards/token"
        print(f"best {s['mode']}, batch {s['batch_size']}: speculative g={s['best_draft_length']} {s['speedup']:.2f}x; "
              f"ceiling {s['ceiling']:.2f}x{prefill}, efficiency {s['efficiency']:.2f}, alpha {s['alpha']:.2f}"
              f"{assisted}{overhead}")


def _category_lines(cells: list[dict]) -> list[str]:
    """Mean accepted length per prompt category (batch 1, speculative), one line per category."""
    spec = [c for c in cells if c.get("per_category")]
    if not spec:
        return []
    columns = [(c["mode"], c["num_draft_tokens"]) for c in spec]
    categories = list(dict.fromkeys(k for c in spec for k in c["per_category"]))
    head = [f"{m} g={g}" for m, g in columns]
    width = max(len(c) for c in categories + ["category"])
    lines = ["mean accepted length (tau) by category, batch 1: " + ", ".join(head)]
    for category in categories:
        values = [c["per_category"].get(category, {}).get("mean_accepted_length") for c in spec]
        lines.append(f"  {category.ljust(width)}  " + "  ".join(
            (f"{v:.2f}" if v is not None else "-").rjust(len(h)) for v, h in zip(values, head)))
    return lines


def main(argv=None) -> int:
    """Console entry point: run, print the report; returns the exit status (0, 1 on bad input, 2 on bad usage)."""
    try:
        run(argv)
    except UsageError as error:
        print(f"{PROG}: error: {error} (see {PROG} --help)", file=sys.stderr)
        return 2
    except SetupError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. head, which has exited
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
