"""How many tokens a speculative step proposes: a fixed ``g``, or ``num_draft_tokens="auto"`` (:class:`AdaptiveLength`).

The adaptive rule, training-free, decides twice per step from what the run measures on its own steps: whether the
step drafts at all (the rates of recent drafting and plain steps, expected tokens over measured seconds), then
position by position how far it drafts (while verifying more raises the expected tokens per second, the chance of
each draft read from its confidence, the seconds from a model of the target's and the draft's forwards). Probes
and refreshes keep both kinds of step measured; a strategy's calls share what they learned. The rule, its
estimates and why each is as it is: ``docs/ADAPTIVE.md``.
"""

from __future__ import annotations

import copy
import threading
import time

import torch

EMA = 0.8  # weight of the past in the running estimates of seconds
LINE_MEMORY = 0.95  # decay per forward of the weights of the forwards that t(n >= 2) is fitted through
# Decay per step of the acceptance counts and of the rates' sums (a batch-1 step tests one or two drafts: ~10 steps)
MEMORY = 0.9
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
BINS = 16  # confidence bins of the acceptance estimate
PRIOR = 2.0  # pseudo-tests at the overall acceptance rate in every bin
# A row's drafts may fare better or worse than their bins say (a prompt the draft knows well, or not at all): in a
# batch, each row's chances are scaled by its accepted drafts over those its bins expected, with this many of each
# added. With one row the bins learn from that row alone, over the same steps: the ratio would add only its noise.
ROW_PRIOR = 2.0


class FixedLength:
    """``g`` tokens every step, nothing measured."""

    def __init__(self, g: int):
        self.g = g

    def limit(self) -> int:
        return self.g

    def chance(self, confidence: torch.Tensor) -> torch.Tensor:
        """Unused: every position is proposed."""
        return confidence

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """None: every row proposes every position."""
        return None

    def drafts_next(self, position: int, reach: torch.Tensor) -> bool:
        return True

    def clock(self) -> float:
        return 0.0

    def observe(self, proposal, num_accepted, draft_seconds, target_seconds, new_tokens, rest_seconds=None) -> None:
        """Nothing to learn."""


class AdaptiveMemory:
    """What a strategy's calls learned, for its next call (thread-safe: one strategy may serve several threads):
    the acceptance state of :class:`AdaptiveLength` and, per batch size, its measured seconds."""

    ACCEPTANCE = ("accepted", "tested", "bin_accepted", "bin_tested", "probe_every", "skipped")
    SECONDS = ("draft_seconds", "target_seconds", "line", "rest_seconds", "realized", "drafting_steps", "undrafted")

    def __init__(self):
        self._lock = threading.Lock()
        self._acceptance: dict = {}
        self._seconds: dict[int, dict] = {}  # batch size -> seconds

    def recall(self, length: "AdaptiveLength", batch_size: int) -> None:
        """Start ``length`` (a new call) from what the last call learned, if any."""
        with self._lock:
            state = {**self._acceptance, **self._seconds.get(batch_size, {})}
        for name, value in state.items():
            setattr(length, name, copy.copy(value))  # numbers, or dicts of numbers and pairs

    def remember(self, length: "AdaptiveLength", batch_size: int) -> None:
        """Keep ``length``'s state after one of its steps."""
        acceptance = {name: getattr(length, name) for name in self.ACCEPTANCE}
        seconds = {name: copy.copy(getattr(length, name)) for name in self.SECONDS}
        with self._lock:
            self._acceptance = acceptance
            self._seconds[batch_size] = seconds


class AdaptiveLength:
    """The rule of the module docstring, for one call; ``max_tokens`` bounds a step's proposals. With a ``memory``,
    the call starts from (and leaves behind) what the strategy's calls learned, for batches of ``batch_size``
    rows; with the call's ``run`` (its ``rows``: the active original rows), the rows of a batch are told apart."""

    def __init__(self, max_tokens: int, device: torch.device, probe_every: int = 16,
                 memory: AdaptiveMemory | None = None, batch_size: int = 1, run=None):
        self.max_tokens, self.device = max_tokens, torch.device(device)
        self.probe_every = self.first_probe = probe_every
        self.steps = self.skipped = 0
        self.draft_seconds: float | None = None  # per draft forward
        self.drafted_before = False  # the first drafting step also reads the prompt: its draft time is not kept
        self.plain_steps = 0  # plain steps since the last drafting step (the draft's backlog)
        self.rest_seconds: float | None = None  # per step, after the target forward
        # Tokens per row and seconds of whole steps, plain and drafting, decayed sums (a ratio of sums: a step's
        # tokens vary from 1 to g + 1). A drafting step counts the tokens it expected (1 plus the estimated chances
        # of accepting its verified positions), not those it got: about the same mean, far less noise.
        self.realized: dict[str, tuple[float, float]] = {"plain": (0.0, 0.0), "draft": (0.0, 0.0)}
        self.target_seconds: dict[int, float] = {}  # new tokens per row -> seconds of a target forward
        # Decayed sums over the target forwards of n >= 2 new tokens: weights, n, t, n^2 and n t (the line of t(n)).
        self.line = (0.0,) * 5
        # Decayed counts of the call's tested drafts, accepted and tested, in all and by confidence bin.
        self.accepted = self.tested = 0.0
        self.bin_accepted = self.bin_tested = (0.0,) * BINS
        self._chances: torch.Tensor | None = None  # by bin, as of the last step
        # Per original row of a batch (``run.rows`` names the active ones; without a run or with one row, no row is
        # told apart): decayed accepted drafts, the drafts their bins expected accepted, their ratio (ROW_PRIOR added).
        self.run = run
        self.row_accepted = self.row_expected = self.row_ratio = None
        self.expected, self.verified = 1.0, 0  # this step so far: expected tokens per row, drafted positions verified
        self.probing = False  # this step is a probe's first: its first position is verified whatever it costs
        self.probe_left = 0  # the probe's drafting steps still to come
        self.measuring = False  # this step is one of a probe's: its rate counts the tokens it got
        self.drafting_steps = 0  # steps drafted because drafting pays (one in REFRESH_EVERY is plain instead)
        self.undrafted = 0  # steps in a row allowed no drafts (how old the drafting rate is)
        self.memory, self.batch_size = memory, batch_size
        if memory is not None:
            memory.recall(self, batch_size)

    def _known(self) -> bool:
        return self.draft_seconds is not None and self.tested > 0 and len(self.target_seconds) >= 2

    @property
    def acceptance(self) -> float:
        """The acceptance rate of the drafts tested so far in this call (decayed)."""
        return self.accepted / self.tested

    def limit(self) -> int:
        """The most tokens this step may propose (0: the target steps alone)."""
        tokens = self._limit()
        self.undrafted = 0 if tokens else self.undrafted + 1
        return tokens

    def _limit(self) -> int:
        self.steps += 1
        self.expected, self.verified, self.probing, self.measuring = 1.0, 0, False, False
        if not self._known():  # warm-up: the prompt alone, then t(2), t(1) and a draft forward measured
            return 0 if self.steps == 1 or (self.target_seconds and 1 not in self.target_seconds) else 1
        if self.probe_left:  # a probe goes on while drafting is close to paying: one step's count is noisy
            if self._drafting_close():
                self.probe_left, self.measuring = self.probe_left - 1, True
                return self.max_tokens
            self.probe_left = 0
        if self._drafting_pays():
            self.skipped, self.probe_every = 0, self.first_probe
            self.drafting_steps += 1
            return 0 if self.drafting_steps % REFRESH_EVERY == 0 else self.max_tokens
        if self.skipped >= self.probe_every:  # drafting measured again
            self.skipped, self.probe_every, self.probing = 0, min(2 * self.probe_every, MAX_PROBE_WAIT), True
            self.probe_left, self.measuring = PROBE_STEPS - 1, True
            return self.max_tokens
        self.skipped += 1
        return 0

    def rate(self, kind: str) -> float | None:
        """Realized tokens per row per second of ``kind`` ("plain" or "draft") steps lately (None: none yet)."""
        tokens, seconds = self.realized[kind]
        return tokens / seconds if seconds > 0 else None

    def _drafting_close(self) -> bool:
        """Whether drafting's rate is at least :data:`CLOSE` of plain steps' (far below it, one step shows it)."""
        plain, draft = self.rate("plain"), self.rate("draft")
        return plain is None or draft is None or draft >= CLOSE * plain

    def _drafting_pays(self) -> bool:
        """Whether this step drafts: the realized rates of drafting and plain steps once both are measured (they
        include what the cost model leaves out or gets wrong), else the cost model at the acceptance so far."""
        plain, draft = self.rate("plain"), self.rate("draft")
        if plain is not None and draft is not None:
            if self.undrafted > FRESH:  # an old drafting rate: wait for a probe
                return False
            catching_up = self.plain_steps or not self.drafted_before  # the draft has tokens to read first
            return draft > plain * (SWITCH if catching_up else 1.0)
        return self._pays(self.acceptance, drafted=0, drafting=True)

    def chance(self, confidence: torch.Tensor) -> torch.Tensor:
        """The estimated chance that a draft is accepted given its confidence, ``confidence  # [b]`` -> ``# [b]`` (the
        active rows): its bin's decayed acceptance rate with :data:`PRIOR` tests at the overall rate (1 before any
        test), times its row's ratio of accepted to expected drafts, at most 1."""
        chances = self._bin_chances(confidence.device)[_bin(confidence)]
        if self.row_ratio is None:
            return chances
        return (chances * self.row_ratio[self.run.rows]).clamp_max(1.0)

    def _bin_chances(self, device) -> torch.Tensor:
        """Every bin's estimated chance ``# [BINS]``."""
        if self._chances is None or self._chances.device != device:
            overall = self.acceptance if self.tested > 0 else 1.0
            self._chances = torch.tensor([(accepted + PRIOR * overall) / (tested + PRIOR) for accepted, tested
                                          in zip(self.bin_accepted, self.bin_tested)], device=device)
        return self._chances

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """Whether the batch verifies drafted position ``position``, as ``# [b]`` (all equal: once a position is
        verified, every row proposing it costs nothing more), ``reach  # [b]`` being each row's estimated chance of
        accepting positions 1..``position`` (0 for a row not proposing it); None while the costs are unknown and at
        a probe's first position, verified whatever it costs (every row proposes)."""
        gain = float(reach.mean())
        forced = not self._known() or self.probing and position == 1
        pays = forced or self._pays(gain, drafted=position, drafting=False)
        if pays:
            self.expected, self.verified = self.expected + gain, position
        return None if forced else torch.full_like(reach, pays, dtype=torch.bool)

    def drafts_next(self, position: int, reach: torch.Tensor) -> bool:
        """Whether drafting position ``position + 1`` pays, ``reach  # [b]`` as in :meth:`proposes` and the next
        position's acceptance assumed at the rate so far."""
        return not self._known() or self._pays(float(reach.mean()) * self.acceptance, drafted=position, drafting=True)

    def _pays(self, reach: float, drafted: int, drafting: bool) -> bool:
        """Whether verifying the next ``m`` positions, for some ``m``, raises the step's expected tokens per second,
        ``reach`` being the chance of accepting the first of them, ``drafted`` the draft forwards spent so far and
        ``drafting`` whether the first is still to be drafted. Looking ahead matters: one more verified token may
        cost much more than the next few (one token takes a faster matrix-vector path on some CPUs)."""
        rest = self.rest_seconds or 0.0
        now = self.expected / (self._target_time(self.verified + 1) + drafted * self.draft_seconds + rest)
        gain = 0.0
        for m in range(1, self.max_tokens - self.verified + 1):
            gain += reach * self.acceptance ** (m - 1)
            drafts = drafted + m - (0 if drafting else 1)
            seconds = self._target_time(self.verified + m + 1) + drafts * self.draft_seconds + rest
            if (self.expected + gain) / seconds > now:
                return True
        return False

    def clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def observe(self, proposal, num_accepted, draft_seconds: float, target_seconds: float, new_tokens: int,
                rest_seconds: float | None = None) -> None:
        """Learn from one step: its proposal, ``num_accepted  # [b]``, the seconds of its draft forwards and of its
        target forward over ``new_tokens`` positions per row (0 when that forward also read a prompt), and the
        seconds the previous step took after its target forward (None: not known)."""
        drafted = proposal.ids.shape[1]
        if rest_seconds is not None:
            self.rest_seconds = _ema(self.rest_seconds, rest_seconds)
        behind = self.plain_steps > 1
        if drafted and draft_seconds > 0 and self.drafted_before and not behind:
            self.draft_seconds = _ema(self.draft_seconds, draft_seconds / drafted)
        # The step's rate, its rest taken as the running estimate (a step's own rest is known only at the next
        # step's start); not for steps that read the prompt (the target's or the draft's), and a draft that caught
        # up on missed tokens is counted at its usual cost (a switch, not the regime's).
        if new_tokens and (drafted == 0 or (self.drafted_before and self.draft_seconds is not None)):
            spent = drafted * self.draft_seconds if drafted and behind else draft_seconds
            self._record("draft" if drafted else "plain", self._tokens(drafted, num_accepted),
                         spent + target_seconds + (self.rest_seconds or 0.0))
        self.drafted_before = self.drafted_before or drafted > 0
        self.plain_steps = 0 if drafted else self.plain_steps + 1
        if new_tokens:
            self.measured(new_tokens, target_seconds)
        self._learn(proposal, num_accepted)
        if self.memory is not None:
            self.memory.remember(self, self.batch_size)

    def _tokens(self, drafted: int, num_accepted: torch.Tensor) -> float:
        """The tokens per row a step counts: 1 for a plain step, the tokens expected for a drafting step, and those
        got for a probe's steps (a probe measures what the estimates may have wrong: counted as expected, the
        drafts of a stretch the draft does well after one it did badly would be judged by the bad stretch's
        chances) and where its proposer verified positions without asking :meth:`proposes` (string-level
        cross-tokenizer drafts)."""
        if not drafted:
            return 1.0
        return self.expected if self.verified and not self.measuring else 1.0 + float(num_accepted.float().mean())

    def _record(self, kind: str, tokens: float, seconds: float) -> None:
        """Add a step of ``kind`` to the realized sums; both kinds decay with every step."""
        self.realized = {name: _decayed(sums, (tokens, seconds) if name == kind else (0.0, 0.0))
                         for name, sums in self.realized.items()}

    def _learn(self, proposal, num_accepted) -> None:
        """Add one step's tested drafts to the decayed acceptance counts, by bin and by row."""
        drafted = proposal.ids.shape[1]
        if drafted == 0:  # a plain step
            return
        positions = torch.arange(drafted, device=num_accepted.device)
        tested = (positions <= num_accepted[:, None]) & (proposal.ids >= 0)  # up to the first rejection
        accepted = positions < num_accepted[:, None]
        confidence = proposal.confidence
        if confidence is None:  # a proposer without confidence: every draft in the last bin
            confidence = torch.ones_like(tested, dtype=torch.float32)
        bins = _bin(confidence.to(tested.device))
        counts = torch.stack([torch.bincount(bins[accepted], minlength=BINS),
                              torch.bincount(bins[tested], minlength=BINS)]).tolist()  # one transfer
        if not any(counts[1]):  # no row proposed anything: nothing learned, nothing decays
            return
        if self.run is not None and self.batch_size > 1:  # one row: its bins are its own record
            self._learn_rows(accepted.sum(dim=1), (self._bin_chances(bins.device)[bins] * tested).sum(dim=1))
        self.bin_accepted = _decayed(self.bin_accepted, counts[0])
        self.bin_tested = _decayed(self.bin_tested, counts[1])
        self.accepted, self.tested = _decayed((self.accepted, self.tested), (sum(counts[0]), sum(counts[1])))
        self._chances = None

    def _learn_rows(self, accepted: torch.Tensor, expected: torch.Tensor) -> None:
        """Add the step's accepted drafts ``# [b]`` and those their bins expected ``# [b]`` to its rows' decayed
        sums, on the device (no transfer)."""
        if self.row_accepted is None:
            self.row_accepted = torch.zeros(self.batch_size, device=accepted.device)
            self.row_expected = torch.zeros(self.batch_size, device=accepted.device)
        rows = self.run.rows
        self.row_accepted = (MEMORY * self.row_accepted).index_add_(0, rows, accepted.float())
        self.row_expected = (MEMORY * self.row_expected).index_add_(0, rows, expected.float())
        self.row_ratio = (self.row_accepted + ROW_PRIOR) / (self.row_expected + ROW_PRIOR)

    def measured(self, new_tokens: int, seconds: float) -> None:
        """Learn that a target forward over ``new_tokens`` tokens per row took ``seconds``."""
        self.target_seconds[new_tokens] = _ema(self.target_seconds.get(new_tokens), seconds)
        if new_tokens > 1:
            n, t = float(new_tokens), seconds
            self.line = _decayed(self.line, (1.0, n, t, n * n, n * t), LINE_MEMORY)

    def _target_time(self, n: int) -> float:
        """``t(n)``: ``t(1)`` as measured, and for ``n >= 2`` a least-squares line through the forwards measured over
        2 or more tokens, weighted by recency (one token often takes a faster matrix-vector path, so it is kept off
        the line); never decreasing."""
        ones = self.target_seconds.get(1)
        weight, sum_n, sum_t, sum_nn, sum_nt = self.line
        if n == 1 and ones is not None or weight == 0:
            return ones if ones is not None else self.target_seconds[min(self.target_seconds)]
        spread = weight * sum_nn - sum_n * sum_n
        slope = max((weight * sum_nt - sum_n * sum_t) / spread, 0.0) if spread > 1e-9 * weight * sum_nn else 0.0
        line = (sum_t - slope * sum_n) / weight + slope * n
        return max(line, ones) if ones is not None else line


def _bin(confidence: torch.Tensor) -> torch.Tensor:
    """The confidence bin of each probability in ``confidence``: ``[0, 1/BINS)`` is bin 0, ``1`` is the last."""
    return (confidence * BINS).long().clamp(0, BINS - 1)


def _decayed(sums: tuple, new, memory: float = MEMORY) -> tuple:
    """Decayed sums: each of ``sums`` times ``memory``, plus its counterpart in ``new``."""
    return tuple(memory * past + value for past, value in zip(sums, new))


def _ema(previous: float | None, value: float) -> float:
    return value if previous is None else EMA * previous + (1 - EMA) * value
