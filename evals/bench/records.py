"""``decoding-bench``'s results as records: :class:`Result` and its parts, whose ``to_dict()`` is the JSON that
``--json`` writes, key for key and in order (the meaning of every figure: ``docs/BENCHMARKS.md``)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields

from decoding.evals.common.acceptance import Acceptance

__all__ = ["Agreement", "Cell", "Check", "Cost", "DraftFigures", "Meta", "PromptRecord", "Result", "Summary"]


@dataclass
class Agreement:
    """A greedy cell's output against the target's own, row by row; sampled cells are not compared."""

    matches_target: bool | None
    rows_matching_target: str  # "equal/rows", or "sampled"
    mean_agreeing_prefix: float | None = None  # mean length of the common start of the rows that differ
    compared: bool = True

    @classmethod
    def of(cls, rows: list[list[int]], reference: list[list[int]]) -> Agreement:
        equal = sum(a == b for a, b in zip(rows, reference))
        differing = [(a, b) for a, b in zip(rows, reference) if a != b]
        prefix = None
        if differing:
            prefix = statistics.mean(next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                                     for a, b in differing)
        return cls(equal == len(reference) and len(rows) == len(reference), f"{equal}/{len(reference)}", prefix)

    @classmethod
    def sampled(cls) -> Agreement:
        return cls(None, "sampled", compared=False)

    def to_dict(self) -> dict:
        out = {"matches_target": self.matches_target, "rows_matching_target": self.rows_matching_target}
        if self.compared:
            out["mean_agreeing_prefix"] = self.mean_agreeing_prefix
        return out


@dataclass
class DraftFigures:
    """What a cell with a draft (assisted, speculative) adds: acceptance, cost ratios, ceilings, efficiencies."""

    acceptance: Acceptance
    c: float  # 0 for draft-free methods (prompt lookup)
    v: float | None  # None (null) for a method without a fixed g (adaptive), and its ceilings too
    ceiling: float | None
    ceiling_v1: float | None
    efficiency: float | None  # decode_speedup / ceiling
    c_generation: float | None
    v_generation: float | None
    # Below, None leaves the key out of the JSON.
    ceiling_generation: float | None = None  # both in-generation ratios measured
    ceiling_with_prefill: float | None = None  # max_new_tokens known
    efficiency_with_prefill: float | None = None  # speedup / ceiling_with_prefill
    acceptance_source: str | None = None  # assisted and hf-lookup cells: whose acceptance they borrow
    per_category: dict[str, dict] | None = None  # speculative cells at batch 1

    def to_dict(self) -> dict:
        out = self.acceptance.to_dict()
        out.update({"c": self.c, "v": self.v, "ceiling": self.ceiling, "ceiling_v1": self.ceiling_v1,
                    "efficiency": self.efficiency, "c_generation": self.c_generation,
                    "v_generation": self.v_generation})
        for key in ("ceiling_generation", "ceiling_with_prefill", "efficiency_with_prefill", "acceptance_source",
                    "per_category"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class Cell:
    """One (mode, batch size, method) of the grid."""

    mode: str  # "greedy" | "sample"
    batch_size: int
    method: str  # "target" | "assisted" | "speculative" | a --variants kind (evals.bench.variants)
    name: str
    num_draft_tokens: int | None
    tokens_per_s: float  # median over rounds
    tokens_per_s_rounds: list[float]
    new_tokens_per_round: float
    speedup: float  # over the target, whole calls
    decode_tokens_per_s: float  # prompt encoding and first token per row taken off
    decode_speedup: float
    agreement: Agreement
    forwards_per_token: float | None = None  # target cells: generate's cost per token, in target forwards
    draft: DraftFigures | None = None
    best: bool = False  # the fastest speculative cell of its mode and batch size
    lossy: bool = False  # output may differ from the target's by design (cascades): not a failed check
    # Below, None leaves the key out of the JSON.
    speedup_vs_static: float | None = None  # over the static-target baseline, when it ran (--variants static-target)
    decode_speedup_vs_static: float | None = None
    speedup_vs_fast: float | None = None  # over the fast-target baseline, when it ran (--variants fast-target)
    decode_speedup_vs_fast: float | None = None
    step_split: dict | None = None  # --step-split: per-step figures (decoding.evals.bench.step_split.RawSplit)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)[:11]}
        for key in ("speedup_vs_static", "decode_speedup_vs_static", "speedup_vs_fast", "decode_speedup_vs_fast"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.forwards_per_token is not None:
            out["forwards_per_token"] = self.forwards_per_token
        out.update(self.agreement.to_dict())
        if self.draft is not None:
            out.update(self.draft.to_dict())
        if self.best:
            out["best"] = True
        if self.lossy:
            out["lossy"] = True
        if self.step_split is not None:
            out["step_split"] = self.step_split
        return out


@dataclass
class Check:
    """Greedy equality of one draft method's cell with the target; a lossy method's (``lossy``) is its match rate,
    not a check: :class:`Result` lists those apart, under ``lossy_checks``."""

    mode: str
    batch_size: int
    name: str
    matches_target: bool | None
    rows_matching_target: str
    mean_agreeing_prefix: float | None
    lossy: bool = False

    @classmethod
    def of(cls, cell: Cell) -> Check:
        a = cell.agreement
        return cls(cell.mode, cell.batch_size, cell.name, a.matches_target, a.rows_matching_target,
                   a.mean_agreeing_prefix, cell.lossy)

    def to_dict(self) -> dict:
        out = asdict(self)
        if not self.lossy:
            del out["lossy"]
        return out


@dataclass
class Cost:
    """The cost ratios at one batch size (means over processes)."""

    c: float  # draft forward / target forward, timed in isolation (a draft head: see c_per_g)
    v: dict[int, float]  # per g: target forward over g+1 tokens / over one
    c_generation: float | None  # the same, timed inside real generate calls (a diagnostic)
    v_generation: dict[int, float | None]
    seconds: dict[str, float]  # median seconds of each timed forward
    context_length: int
    prompt_length: int
    prefill_target: float  # prompt encoding, in target forwards
    prefill_draft: float  # a draft head: its reading of the prompt
    per_process: list[dict] | None = None  # data parallel: each process's c and v
    # A draft head only (None leaves the keys out of the JSON): its drafting seconds per drafted position at each
    # g, in profiled calls, over the isolated target forward (c pools every g); the same over the in-generation one.
    c_per_g: dict[int, float] | None = None
    c_generation_per_g: dict[int, float | None] | None = None

    def c_at(self, g: int | None) -> tuple[float, float | None]:
        """``(c, c_generation)`` of a method drafting ``g`` tokens a step with the pair's draft: a draft head's
        at that g where measured, else the pooled ones."""
        if self.c_per_g is None or g not in self.c_per_g:
            return self.c, self.c_generation
        return self.c_per_g[g], (self.c_generation_per_g or {}).get(g)

    def to_dict(self) -> dict:
        out = {"c": self.c, "v": {str(g): x for g, x in self.v.items()}, "c_generation": self.c_generation,
               "v_generation": self.v_generation, "seconds": self.seconds, "context_length": self.context_length,
               "prompt_length": self.prompt_length, "prefill_target": self.prefill_target,
               "prefill_draft": self.prefill_draft}
        if self.c_per_g is not None:
            out["c_per_g"] = {str(g): x for g, x in self.c_per_g.items()}
            out["c_generation_per_g"] = {str(g): x for g, x in (self.c_generation_per_g or {}).items()}
        if self.per_process is not None:
            out["per_process"] = self.per_process
        return out


@dataclass
class Meta:
    """Where and how the results were measured."""

    date: str
    git_commit: str | None
    versions: dict  # python and library versions (provenance.library_versions), spread into the JSON
    decoding: str
    device: str
    device_name: str
    device_names: list[str]  # per process
    num_processes: int
    torch_threads: int
    kernels: str
    cupy: dict  # {"available", "reason"}
    target: str
    draft: str
    dtype: str
    quantization: str | None
    target_parameters: int
    draft_parameters: int
    arguments: dict
    benchmark_seconds: float
    draft_head: str | None = None  # --head: the draft head's folder or hub id (the draft is that head)

    def to_dict(self) -> dict:
        out = {"date": self.date, "git_commit": self.git_commit, **self.versions}
        out.update({f.name: getattr(self, f.name) for f in fields(self)[3:]})
        return out


@dataclass
class PromptRecord:
    id: str
    category: str
    tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Summary:
    """The best speculative cell of one mode and batch size, with its context."""

    mode: str
    batch_size: int
    best_draft_length: int
    speedup: float
    decode_speedup: float
    ceiling: float
    efficiency: float
    ceiling_with_prefill: float | None
    alpha: float
    assisted_speedup: float | None  # assistant_model= at the same g
    target_forwards_per_token: float | None
    static_target_speedup: float | None = None  # the best cell's speedup over the static-target baseline
    efficiency_with_prefill: float | None = None  # the whole-call speedup over the ceiling counting prefill
    fast_target_speedup: float | None = None  # the best cell's speedup over the fast-target baseline

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Result:
    """Everything a run measured; ``to_dict()`` is the ``--json`` file."""

    meta: Meta
    prompts: list[PromptRecord]
    costs: dict[int, Cost]  # per batch size
    checks: list[Check]  # lossy ones included: to_dict() lists them apart
    cells: list[Cell]
    summary: list[Summary]
    notes: list[str] = field(default_factory=list)  # methods left out and why (--head: transformers' assisted)

    def to_dict(self) -> dict:
        out = {"meta": self.meta.to_dict(), "prompts": [p.to_dict() for p in self.prompts]}
        if self.notes:
            out["notes"] = list(self.notes)
        out.update({
            "costs": {str(b): cost.to_dict() for b, cost in self.costs.items()},
            "checks": [c.to_dict() for c in self.checks if not c.lossy]})
        lossy = [c.to_dict() for c in self.checks if c.lossy]
        if lossy:  # match rates of lossy methods: never failures
            out["lossy_checks"] = lossy
        out.update({"cells": [c.to_dict() for c in self.cells], "summary": [s.to_dict() for s in self.summary]})
        return out
