"""The proposer interface: where speculative decoding's draft tokens come from.

A :class:`Proposer` holds settings only; :meth:`Proposer.start` returns a :class:`Drafter` that lives for one
``generate`` call. Each step the drafter proposes up to ``k`` tokens per active row (:class:`Proposal`), the
target verifies them, and the drafter hears how many were accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Proposal:
    """One step's drafts for the active rows.

    - ``ids  # [b, k]`` int64: a row's proposals first, then -1 where it proposes nothing more.
    - ``probs  # [b, k, V]``: the law each id was drawn from (one-hot for a deterministic proposer), an all-zero
      row at -1 positions, so that the token emitted there is drawn from the target's law; None when greedy.
    - ``logits  # [b, k+1, V]``: the draft model's raw logits at the verified positions (``score_bonus``), or None.
    - ``confidence  # [b, k]``: the proposer's confidence in each id (a draft model's probability of it), or None.
    """

    ids: torch.Tensor
    probs: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    full: bool = False  # known on the host: every row proposed every position (trimming reads nothing then)

    def lengths(self) -> torch.Tensor:
        """Tokens each row proposes ``# [b]``."""
        return (self.ids >= 0).sum(dim=1)

    def trimmed(self) -> Proposal:
        """Without the trailing positions no row proposes: the target verifies only what some row proposed (a row
        with nothing to propose, e.g. no n-gram match, makes a plain target step at batch size 1)."""
        if self.full:
            return self
        g = int(self.lengths().max()) if self.ids.numel() else 0
        if g == self.ids.shape[1]:
            return self
        return Proposal(ids=self.ids[:, :g], probs=None if self.probs is None else self.probs[:, :g],
                        logits=None if self.logits is None else self.logits[:, : g + 1],
                        confidence=None if self.confidence is None else self.confidence[:, :g])


@dataclass
class TargetFeatures:
    """The target's hidden states where its last forward read tokens, for a drafter that reads them
    (:attr:`Drafter.target_layers`).

    - ``values  # [b, n, F]``: the drafter's layers' states, concatenated (``F = len(target_layers) * H``);
    - ``valid  # [b, n]`` int64: 1 where a real token was read (0: left padding, a slot no row proposed), or None
      when every one was;
    - ``drafted``: the last ``drafted`` columns were this step's drafts; the columns before them, committed tokens.
    """

    values: torch.Tensor
    valid: torch.Tensor | None
    drafted: int


class PositionGate:
    """Which rows still propose, position by position, as the length policy (:mod:`decoding.adaptive`) decides:
    written once for every proposer. ``reach  # [b]`` is each row's estimated chance of accepting all its drafts so
    far; a row stops for good once it stops."""

    def __init__(self, length, rows: torch.Tensor):
        self.length, self.rows = length, rows  # rows [b]: the batch's original rows
        self.proposing = torch.ones(rows.numel(), dtype=torch.bool, device=rows.device)  # [b]
        self.reach = torch.ones(rows.numel(), device=rows.device)  # [b]
        self.everyone = True  # known on the host: no row has stopped (a fixed length stops none)

    def admit(self, position: int, confidence: torch.Tensor | None,
              can_propose: torch.Tensor | None = None) -> torch.Tensor:
        """The rows ``# [b]`` that propose drafted position ``position`` (1-based), whose drafts have confidence
        ``confidence  # [b]`` (None where the length policy reads none); ``can_propose  # [b]``: rows that have a
        draft there at all (default: every row)."""
        if confidence is not None:
            self.reach = self.reach * self.length.chance(confidence, self.rows)
        candidates = self.proposing if can_propose is None else self.proposing & can_propose
        keep = self.length.proposes(position, self._weighted(candidates))
        self.proposing = candidates if keep is None else candidates & keep
        self.everyone &= can_propose is None and keep is None
        return self.proposing

    def goes_on(self, position: int) -> bool:
        """Whether drafting position ``position + 1`` pays for some row (a host read per drafted position, unless
        every row still proposes)."""
        return (self.everyone or bool(self.proposing.any())) \
            and self.length.drafts_next(position, self._weighted(self.proposing))

    def _weighted(self, rows: torch.Tensor) -> torch.Tensor:
        """``reach`` where ``rows  # [b]`` propose, 0 elsewhere; a policy that reads no confidence (a fixed length,
        whose reach stays 1) gets ``rows`` as they are (one operation fewer per position)."""
        return self.reach * rows if self.length.reads_confidence else rows


class DraftSteps:
    """A step's drafts as a proposer builds them, position by position: each position's token is drawn from the
    proposer's scores through the sampler (the user's processing), the :class:`PositionGate` decides which rows
    propose it, and it is written tentatively after each row's committed tokens where the user's processors read
    them (a fixed length reads no confidence and processors that read scores only no tokens: then neither is
    computed or written)."""

    def __init__(self, run, sampler, length):
        self.run, self.sampler, self.gate = run, sampler, PositionGate(length, run.rows)
        self.ids, self.probs, self.confidence = [], [], []
        self.reads_confidence = length.reads_confidence

    def draw(self, position: int, scores: torch.Tensor, can_propose=None) -> torch.Tensor:
        """Draft position ``position`` (0-based) from ``scores  # [b, V]``; returns the drawn tokens ``# [b]``
        (those of rows no longer proposing included). ``can_propose(token) -> # [b]``: rows that may propose it."""
        token, q = self.sampler.draft(self.run.rows, scores, position)  # [b], [b, V] or None when greedy
        sure = None
        if self.reads_confidence:
            law = q if q is not None else torch.softmax(scores.float(), dim=-1)
            sure = law.gather(1, token[:, None]).squeeze(1).float()  # [b] the proposer's confidence in its token
            self.confidence.append(sure)
        proposing = self.gate.admit(position + 1, sure, None if can_propose is None else can_propose(token))
        everyone = self.gate.everyone  # known on the host: no masking needed
        self.ids.append(token if everyone else torch.where(proposing, token, -1))
        if q is not None:
            self.probs.append(q if everyone else q * proposing[:, None])  # no proposal: an all-zero law
        if self.sampler.reads_tokens:
            self.run.sequences.write(self.run.rows, position, self.ids[-1][:, None])
        return token

    def goes_on(self, position: int) -> bool:
        return self.gate.goes_on(position)

    def proposal(self, **extra) -> Proposal:
        """The :class:`Proposal` of the positions drawn (``extra``: its other fields, such as ``logits``)."""
        if not self.ids:
            b, device = self.run.rows.numel(), self.run.rows.device
            return Proposal(ids=torch.empty(b, 0, dtype=torch.int64, device=device), probs=None, **extra)
        return Proposal(ids=torch.stack(self.ids, dim=1), probs=torch.stack(self.probs, dim=1) if self.probs else None,
                        confidence=torch.stack(self.confidence, dim=1) if self.confidence else None,
                        full=self.gate.everyone, **extra)


class Drafter:
    """A proposer's state during one call. Subclasses implement :meth:`propose`; the rest defaults to nothing.

    ``target_layers``: the target's hidden states the drafter reads (indices into transformers' ``hidden_states``);
    the loop hands them to :meth:`accept` after every target forward."""

    target_layers: tuple[int, ...] = ()

    def propose(self, run, sampler, k: int, length) -> Proposal:
        """Up to ``k`` draft tokens per active row, written tentatively after each row's committed tokens;
        ``length`` (:mod:`decoding.adaptive`) may stop a row, or the whole step, earlier."""
        raise NotImplementedError

    def accept(self, num_accepted: torch.Tensor, features: TargetFeatures | None = None) -> None:
        """After verification and commit: ``num_accepted  # [b]`` drafts of each row were kept; ``features``: the
        target's hidden states of that forward, when :attr:`target_layers` asks for any."""

    def select_rows(self, survivors: torch.Tensor) -> None:
        """Keep the rows ``survivors  # [b']`` (positions in the current batch)."""

    def prepare(self, run, compact_threshold: float) -> None:
        """Before the next step (caches may be compacted)."""


class Proposer:
    """Settings of a source of draft tokens; ``start(run)`` makes its per-call :class:`Drafter`."""

    role = "draft"

    def start(self, run) -> Drafter:
        raise NotImplementedError

    def models(self) -> dict:
        """Models it runs beside the target, by role (for device and architecture checks)."""
        return {}

    def validate(self, target, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Checks of one call, before any forward pass."""


def one_hot_probs(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """The law of a deterministic proposal: one-hot rows ``# [b, k, V]`` float32, all-zero where ``ids`` is -1."""
    probs = torch.zeros(*ids.shape, vocab, dtype=torch.float32, device=ids.device)
    probs.scatter_(2, ids.clamp_min(0)[..., None], (ids >= 0).to(torch.float32)[..., None])
    return probs
