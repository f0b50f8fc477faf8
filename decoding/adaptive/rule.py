"""The length policies: a fixed ``g`` (:class:`FixedLength`), or ``num_draft_tokens="auto"`` (:class:`AdaptiveLength`),
and what a strategy's calls carry from one to the next (:class:`AdaptiveMemory`)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import torch

from .estimates import Acceptance, Rates, Seconds, confidence_bin, ema
from .step import NoStopwatch, StepFacts, Stopwatch

# The longest wait between probes, in plain steps. A probe costs more than a drafting step: the draft first reads
# what it missed, the whole prompt in a new call. Waits double and are carried across calls, so where drafting
# keeps not paying a probe comes about once in 256 steps, a few calls of typical length.
MAX_PROBE_WAIT = 256
# A probe drafts up to this many steps in a row, its further steps only while drafting's rate is at least CLOSE of
# plain steps': near the line one step is too noisy to judge by, far below it one step shows it.
PROBE_STEPS = 3
CLOSE = 0.8
# While drafting pays, one step in this many is a plain one: the plain steps' rate would otherwise keep the value
# of the last plain stretch (the warm-up's single step, at worst) for as long as drafting lasts.
REFRESH_EVERY = 32
# After plain steps (or at a call's start), drafting resumes only when its rate beats theirs by this factor: the
# draft's first forward then reads what it missed (the whole prompt in a new call), a cost the rates leave out; near
# the line, switching back and forth would pay it again and again.
SWITCH = 1.05
# Drafting's rate is compared with plain steps' only within this many plain steps of the last step that drafted
# (or was allowed to): the machine's speed drifts (by 20% within a minute on a shared CPU), and a drafting rate
# from before a long stretch of plain steps against their current rate would switch on the drift, not on the
# drafts. After that the target steps alone until a probe measures drafting again.
FRESH = 2
# A row's drafts may fare better or worse than their bins say (a prompt the draft knows well, or not at all): in a
# batch, each row's chances are scaled by its accepted drafts over those its bins expected, with this many of each
# added. With one row the bins learn from that row alone, over the same steps: the ratio would add only its noise.
ROW_PRIOR = 2.0
MEMORY = 0.9  # decay per step of each row's sums


class FixedLength:
    """``g`` tokens every step, nothing measured."""

    reads_confidence = False  # drafts' confidences are not computed for it

    def __init__(self, g: int):
        self.g = g

    def limit(self) -> int:
        return self.g

    def chance(self, confidence: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Unused: every position is proposed."""
        return confidence

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """None: every row proposes every position."""
        return None

    def drafts_next(self, position: int, reach: torch.Tensor) -> bool:
        return True

    def stopwatch(self) -> NoStopwatch:
        return NoStopwatch()

    def observe(self, facts: StepFacts) -> None:
        """Nothing to learn."""


@dataclass
class Schedule:
    """When steps draft: the probe wait (``probe_every``, doubling up to :data:`MAX_PROBE_WAIT`; ``first_probe``,
    where it starts again once drafting pays), the plain steps ``skipped`` since, the probe's drafting steps still
    to come, the steps drafted because drafting pays (one in :data:`REFRESH_EVERY` is plain instead) and the steps
    in a row allowed no drafts (how old the drafting rate is)."""

    probe_every: int
    first_probe: int
    skipped: int = 0
    probe_left: int = 0
    drafting_steps: int = 0
    undrafted: int = 0


@dataclass
class CallState:
    """This call's steps, whether the draft has drafted yet (its first drafting step also reads the prompt), and
    the plain steps since the last drafting step (the draft's backlog)."""

    steps: int = 0
    drafted_before: bool = False
    plain_steps: int = 0


@dataclass
class StepPlan:
    """The step under way: its expected tokens per row so far, the drafted positions it verifies, whether it is a
    probe's first step (whose first position is verified whatever it costs) and whether it is one of a probe's
    (whose rate counts the tokens it got)."""

    expected: float = 1.0
    verified: int = 0
    probing: bool = False
    measuring: bool = False


@dataclass
class RowScales:
    """Per original row of a batch: decayed accepted drafts, the drafts their bins expected accepted, their ratio
    (with :data:`ROW_PRIOR` of each added)."""

    accepted: torch.Tensor  # [B]
    expected: torch.Tensor  # [B]
    ratio: torch.Tensor  # [B]


class AdaptiveLength:
    """The rule of ``docs/ADAPTIVE.md``, for one call; ``max_tokens`` bounds a step's proposals. With a ``memory``,
    the call starts from (and leaves behind) what the strategy's calls learned, for batches of ``batch_size`` rows;
    with ``batch_size > 1``, the rows of a batch are told apart."""

    reads_confidence = True  # a draft's chance is read from its confidence

    def __init__(self, max_tokens: int, device: torch.device, probe_every: int = 16,
                 memory: AdaptiveMemory | None = None, batch_size: int = 1):
        self.max_tokens, self.device = max_tokens, torch.device(device)
        self.acceptance, self.seconds, self.rates = Acceptance(), Seconds(), Rates()
        self.schedule = Schedule(probe_every, probe_every)
        self.call, self.plan = CallState(), StepPlan()
        self.rows: RowScales | None = None
        self._chances: torch.Tensor | None = None  # by bin, as of the last step
        self.memory, self.batch_size = memory, batch_size
        if memory is not None:
            memory.recall(self, batch_size)

    def known(self) -> bool:
        return self.seconds.known() and self.acceptance.tested > 0

    def stopwatch(self) -> Stopwatch:
        return Stopwatch(self.device)

    # ---------------------------------------------------------------------------- whether a step drafts at all
    def limit(self) -> int:
        """The most tokens this step may propose (0: the target steps alone)."""
        tokens = self._limit()
        self.schedule.undrafted = 0 if tokens else self.schedule.undrafted + 1
        return tokens

    def _limit(self) -> int:
        schedule = self.schedule
        self.call.steps += 1
        self.plan = StepPlan()
        if not self.known():  # warm-up: the prompt alone, then t(2), t(1) and a draft forward measured
            target = self.seconds.target
            return 0 if self.call.steps == 1 or (target and 1 not in target) else 1
        if schedule.probe_left:  # a probe goes on while drafting is close to paying: one step's count is noisy
            if self._drafting_close():
                schedule.probe_left -= 1
                self.plan.measuring = True
                return self.max_tokens
            schedule.probe_left = 0
        if self._drafting_pays():
            schedule.skipped, schedule.probe_every = 0, schedule.first_probe
            schedule.drafting_steps += 1
            return 0 if schedule.drafting_steps % REFRESH_EVERY == 0 else self.max_tokens
        if schedule.skipped >= schedule.probe_every:  # drafting measured again
            schedule.skipped, schedule.probe_every = 0, min(2 * schedule.probe_every, MAX_PROBE_WAIT)
            schedule.probe_left = PROBE_STEPS - 1
            self.plan.probing = self.plan.measuring = True
            return self.max_tokens
        schedule.skipped += 1
        return 0

    def _drafting_close(self) -> bool:
        """Whether drafting's rate is at least :data:`CLOSE` of plain steps' (far below it, one step shows it)."""
        plain, draft = self.rates.rate("plain"), self.rates.rate("draft")
        return plain is None or draft is None or draft >= CLOSE * plain

    def _drafting_pays(self) -> bool:
        """Whether this step drafts: the realized rates of drafting and plain steps once both are measured (they
        include what the cost model leaves out or gets wrong), else the cost model at the acceptance so far."""
        plain, draft = self.rates.rate("plain"), self.rates.rate("draft")
        if plain is not None and draft is not None:
            if self.schedule.undrafted > FRESH:  # an old drafting rate: wait for a probe
                return False
            catching_up = self.call.plain_steps or not self.call.drafted_before  # the draft has tokens to read first
            return draft > plain * (SWITCH if catching_up else 1.0)
        return self.pays(self.acceptance.rate, forwards=0, drafting=True)

    # ---------------------------------------------------------------------------- how far it drafts, position by position
    def chance(self, confidence: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The estimated chance that a draft is accepted given its confidence, ``confidence  # [b]`` of the batch's
        original rows ``rows  # [b]`` -> ``# [b]``: its bin's decayed acceptance rate, times its row's ratio of
        accepted to expected drafts, at most 1."""
        chances = self._bin_chances(confidence.device)[confidence_bin(confidence)]
        if self.rows is None:
            return chances
        return (chances * self.rows.ratio[rows]).clamp_max(1.0)

    def _bin_chances(self, device) -> torch.Tensor:
        if self._chances is None or self._chances.device != device:
            self._chances = self.acceptance.chances(device)
        return self._chances

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """Whether the batch verifies drafted position ``position``, as ``# [b]`` (all equal: once a position is
        verified, every row proposing it costs nothing more), ``reach  # [b]`` being each row's estimated chance of
        accepting positions 1..``position`` (0 for a row not proposing it); None while the costs are unknown and at
        a probe's first position, verified whatever it costs (every row proposes)."""
        gain = float(reach.mean())
        forced = not self.known() or self.plan.probing and position == 1
        pays = forced or self.pays(gain, forwards=position, drafting=False)
        if pays:
            self.plan.expected, self.plan.verified = self.plan.expected + gain, position
        return None if forced else torch.full_like(reach, pays, dtype=torch.bool)

    def drafts_next(self, position: int, reach: torch.Tensor) -> bool:
        """Whether drafting position ``position + 1`` pays, ``reach  # [b]`` as in :meth:`proposes` and the next
        position's acceptance assumed at the rate so far."""
        return not self.known() or self.pays(float(reach.mean()) * self.acceptance.rate, forwards=position,
                                             drafting=True)

    def pays(self, reach: float, forwards: int, drafting: bool) -> bool:
        """Whether verifying the next ``m`` positions, for some ``m``, raises the step's expected tokens per second,
        ``reach`` being the chance of accepting the first of them, ``forwards`` the draft forwards spent so far and
        ``drafting`` whether the first is still to be drafted. Looking ahead matters: one more verified token may
        cost much more than the next few (one token takes a faster matrix-vector path on some CPUs)."""
        seconds, plan, rate = self.seconds, self.plan, self.acceptance.rate
        rest = seconds.rest or 0.0
        now = plan.expected / (seconds.target_time(plan.verified + 1) + forwards * seconds.draft + rest)
        gain = 0.0
        for m in range(1, self.max_tokens - plan.verified + 1):
            gain += reach * rate ** (m - 1)
            drafts = forwards + m - (0 if drafting else 1)
            cost = seconds.target_time(plan.verified + m + 1) + drafts * seconds.draft + rest
            if (plan.expected + gain) / cost > now:
                return True
        return False

    # ---------------------------------------------------------------------------- learning from a step
    def observe(self, facts: StepFacts) -> None:
        """Learn from one step (see :class:`~decoding.adaptive.step.StepFacts`)."""
        width, call = facts.width, self.call
        if facts.rest_seconds is not None:
            self.seconds = replace(self.seconds, rest=ema(self.seconds.rest, facts.rest_seconds))
        behind = call.plain_steps > 1
        if width and facts.draft_seconds > 0 and call.drafted_before and not behind:
            self.seconds = replace(self.seconds, draft=ema(self.seconds.draft, facts.draft_seconds / width))
        # The step's rate, its rest taken as the running estimate (a step's own rest is known only at the next
        # step's start); not for steps that read the prompt (the target's or the draft's), and a draft that caught
        # up on missed tokens is counted at its usual cost (a switch, not the regime's).
        if facts.new_tokens and (width == 0 or (call.drafted_before and self.seconds.draft is not None)):
            spent = width * self.seconds.draft if width and behind else facts.draft_seconds
            self.rates = self.rates.recorded("draft" if width else "plain", self._tokens(facts),
                                             spent + facts.target_seconds + (self.seconds.rest or 0.0))
        call.drafted_before = call.drafted_before or width > 0
        call.plain_steps = 0 if width else call.plain_steps + 1
        if facts.new_tokens:
            self.seconds = self.seconds.with_target(facts.new_tokens, facts.target_seconds)
        self.learn(facts)
        if self.memory is not None:
            self.memory.remember(self, self.batch_size)

    def _tokens(self, facts: StepFacts) -> float:
        """The tokens per row a step counts: 1 for a plain step, the tokens expected for a drafting step, and those
        got for a probe's steps (a probe measures what the estimates may have wrong) and where its proposer verified
        positions without asking :meth:`proposes` (string-level cross-tokenizer drafts)."""
        if not facts.width:
            return 1.0
        if self.plan.verified and not self.plan.measuring:
            return self.plan.expected
        _, _, num_accepted, _ = facts.unfinished()
        return 1.0 + float(num_accepted.float().mean())

    def learn(self, facts: StepFacts) -> None:
        """Add one step's tested drafts of the unfinished rows to the decayed acceptance counts, by bin and by row."""
        if facts.width == 0:  # a plain step
            return
        ids, confidence, num_accepted, rows = facts.unfinished()
        positions = torch.arange(facts.width, device=num_accepted.device)
        tested = (positions <= num_accepted[:, None]) & (ids >= 0)  # up to the first rejection
        accepted = positions < num_accepted[:, None]
        if confidence is None:  # a proposer without confidence: every draft in the last bin
            confidence = torch.ones_like(tested, dtype=torch.float32)
        bins = confidence_bin(confidence.to(tested.device))
        counts = torch.stack([torch.bincount(bins[accepted], minlength=len(self.acceptance.bin_tested)),
                              torch.bincount(bins[tested], minlength=len(self.acceptance.bin_tested))]).tolist()
        if not any(counts[1]):  # no row proposed anything: nothing learned, nothing decays
            return
        if self.batch_size > 1 and rows is not None:  # one row: its bins are its own record
            expected = (self._bin_chances(bins.device)[bins] * tested).sum(dim=1)
            self._learn_rows(rows, accepted.sum(dim=1), expected)
        self.acceptance = self.acceptance.learned(*counts)
        self._chances = None

    def _learn_rows(self, rows: torch.Tensor, accepted: torch.Tensor, expected: torch.Tensor) -> None:
        """Add the step's accepted drafts ``# [b]`` and those their bins expected ``# [b]`` to the decayed sums of
        its original rows ``rows  # [b]``, on the device (no transfer)."""
        if self.rows is None:
            zeros = torch.zeros(self.batch_size, device=accepted.device)
            self.rows = RowScales(zeros, zeros.clone(), zeros.clone())
        row_accepted = (MEMORY * self.rows.accepted).index_add_(0, rows, accepted.float())
        row_expected = (MEMORY * self.rows.expected).index_add_(0, rows, expected.float())
        self.rows = RowScales(row_accepted, row_expected, (row_accepted + ROW_PRIOR) / (row_expected + ROW_PRIOR))


@dataclass(frozen=True)
class Carried:
    """What a call leaves its strategy's next call: the acceptance and probe wait for every batch size, and per
    batch size (``paces``) the seconds, rates and drafting counts."""

    acceptance: Acceptance
    probe_every: int
    skipped: int
    paces: dict = field(default_factory=dict)  # batch size -> (Seconds, Rates, drafting_steps, undrafted)


class AdaptiveMemory:
    """What a strategy's calls learned, for its next call (thread-safe: one strategy may serve several threads).
    Every estimate is immutable, so recalling and remembering copy no data."""

    def __init__(self):
        self._lock = threading.Lock()
        self._carried: Carried | None = None

    def recall(self, length: AdaptiveLength, batch_size: int) -> None:
        """Start ``length`` (a new call) from what the last call learned, if any."""
        with self._lock:
            carried = self._carried
        if carried is None:
            return
        length.acceptance = carried.acceptance
        length.schedule.probe_every, length.schedule.skipped = carried.probe_every, carried.skipped
        if batch_size in carried.paces:
            seconds, rates, drafting_steps, undrafted = carried.paces[batch_size]
            length.seconds, length.rates = seconds, rates
            length.schedule.drafting_steps, length.schedule.undrafted = drafting_steps, undrafted

    def remember(self, length: AdaptiveLength, batch_size: int) -> None:
        """Keep ``length``'s state after one of its steps."""
        schedule = length.schedule
        pace = (length.seconds, length.rates, schedule.drafting_steps, schedule.undrafted)
        with self._lock:
            paces = {} if self._carried is None else self._carried.paces
            self._carried = Carried(length.acceptance, schedule.probe_every, schedule.skipped,
                                    {**paces, batch_size: pace})
