"""How many tokens a speculative step proposes: a fixed ``g``, or ``num_draft_tokens="auto"`` (:class:`AdaptiveLength`).

The adaptive rule, training-free, decides twice. At the start of a step, whether it drafts at all: once both have
been measured, by the realized tokens per second of the run's recent drafting steps against its plain steps (whole
steps, decayed sums: what the cost model below leaves out or gets wrong is in them); before that, by the cost
model at position 1. Within a drafting step, position by position: a step grows while growing raises its expected
tokens per second. With ``E`` the tokens a row expects from the step so far (1 for the target's own token, plus the
chance of accepting each verified draft position) and ``v`` positions verified and ``d`` draft forwards spent so
far, the next position is drafted when, for some ``m >= 1``, verifying ``m`` more positions pays::

    (E + r (1 + a + ... + a^(m-1))) / (t(v + m + 1) + (d + m) t_draft + R)  >  E / (t(v + 1) + d t_draft + R)

and a drafted position is verified by the same test with its draft forward already spent. Looking ``m`` positions
ahead matters because ``t(n)`` is not linear: on a CPU one token takes a matrix-vector path much faster than two,
while the next few tokens cost little more. ``r`` is the row's estimated chance of accepting the positions up to
the next one (averaged over rows) and ``a`` the acceptance rate of the drafts tested lately.
A row's chance of accepting positions 1..i is the product of the draft's confidence in each of its tokens
(``q(x)`` when sampling, its top probability when greedy; 1 for proposers without one) times the calibration
(accepted drafts over the confidence of the drafts tested), and ``a`` for a position not drafted yet.
``t(n)`` is the time of a target forward over ``n`` new tokens (``t(1)`` and a line fitted through
the forwards measured over more tokens), ``t_draft`` that of a draft forward (kept only from steps whose draft was
at most one step behind: after a run of plain steps the draft's first forward also reads what it missed) and ``R``
the rest of a step (verification, commit, cache bookkeeping: a plain step pays it too), all measured on the run's
own steps: the first steps read the prompt, then propose one token (``t(2)``, and the draft reads the prompt), none
(``t(1)``) and one (a draft forward without the prompt); ``t(n)`` is flat beyond ``t(2)`` until longer
verifications are measured. The decision is the batch's (one more verified position costs the same whether one
row or all rows propose it), so every row proposes the positions the batch verifies. When drafting does not pay,
the target steps alone, and a probe step drafts after ``probe_every`` such steps (its first position verified
whatever it costs, further ones as the rule says); the wait doubles after every probe that finds drafting still
does not pay, up to :data:`MAX_PROBE_WAIT` steps, so that a change in acceptance is noticed.

A strategy keeps an :class:`AdaptiveMemory` across its calls: a call starts from what the previous one learned
(the decayed acceptance counts, the probe wait, and for its batch size the measured seconds and realized rates), so
that only a strategy's first call of a batch size pays for the warm-up. The call's own observations take over
within about ten steps (counts and sums decay by ``MEMORY``).
"""

from __future__ import annotations

import copy
import threading
import time

import torch

EMA = 0.8  # weight of the past in the running estimates of seconds
MEMORY = 0.9  # decay per step of the acceptance counts (a batch-1 step tests one or two drafts: keep ~10 steps)
# The longest wait between probes, in plain steps. A probe costs more than a drafting step: the draft first reads
# what it missed, the whole prompt in a new call. Waits double and are carried across calls, so where drafting
# keeps not paying a probe comes about once in 256 steps, a few calls of typical length.
MAX_PROBE_WAIT = 256


class FixedLength:
    """``g`` tokens every step, nothing measured."""

    def __init__(self, g: int):
        self.g = g

    def limit(self) -> int:
        return self.g

    def calibration(self) -> float:
        return 1.0

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

    ACCEPTANCE = ("accepted", "tested", "tested_confidence", "probe_every", "skipped")
    SECONDS = ("draft_seconds", "target_seconds", "rest_seconds", "realized")

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
    rows."""

    def __init__(self, max_tokens: int, device: torch.device, probe_every: int = 16,
                 memory: AdaptiveMemory | None = None, batch_size: int = 1):
        self.max_tokens, self.device = max_tokens, torch.device(device)
        self.probe_every = self.first_probe = probe_every
        self.steps = self.skipped = 0
        self.draft_seconds: float | None = None  # per draft forward
        self.drafted_before = False  # the first drafting step also reads the prompt: its draft time is not kept
        self.plain_steps = 0  # plain steps since the last drafting step (the draft's backlog)
        self.rest_seconds: float | None = None  # per step, after the target forward
        # Realized tokens per row and seconds of whole steps, plain and drafting, decayed sums (a ratio of sums:
        # a step's tokens vary from 1 to g + 1), and the last step's, waiting for its rest (known at the next
        # step's start): (kind, tokens per row, seconds).
        self.realized: dict[str, tuple[float, float]] = {"plain": (0.0, 0.0), "draft": (0.0, 0.0)}
        self.pending: tuple[str, float, float] | None = None
        self.target_seconds: dict[int, float] = {}  # new tokens per row -> seconds of a target forward
        # Decayed sums over the call's tested drafts: accepted, tested, and the confidence of those tested.
        self.accepted = self.tested = self.tested_confidence = 0.0
        self.expected, self.verified = 1.0, 0  # this step so far: expected tokens per row, drafted positions verified
        self.probing = False  # this step drafts one token to measure acceptance, whatever it costs
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
        self.steps += 1
        self.expected, self.verified, self.probing = 1.0, 0, False
        if not self._known():  # warm-up: the prompt alone, then t(2), t(1) and a draft forward measured
            return 0 if self.steps == 1 or (self.target_seconds and 1 not in self.target_seconds) else 1
        if self._drafting_pays():
            self.skipped, self.probe_every = 0, self.first_probe
            return self.max_tokens
        if self.skipped >= self.probe_every:  # drafting measured again
            self.skipped, self.probe_every, self.probing = 0, min(2 * self.probe_every, MAX_PROBE_WAIT), True
            return self.max_tokens
        self.skipped += 1
        return 0

    def rate(self, kind: str) -> float | None:
        """Realized tokens per row per second of ``kind`` ("plain" or "draft") steps lately (None: none yet)."""
        tokens, seconds = self.realized[kind]
        return tokens / seconds if seconds > 0 else None

    def _drafting_pays(self) -> bool:
        """Whether this step drafts: the realized rates of drafting and plain steps once both are measured (they
        include what the cost model leaves out or gets wrong), else the cost model at the acceptance so far."""
        plain, draft = self.rate("plain"), self.rate("draft")
        if plain is not None and draft is not None:
            return draft > plain
        return self._pays(self.acceptance, drafted=0, drafting=True)

    def calibration(self) -> float:
        """Accepted drafts per unit of draft confidence, in this call (1 before any test). Not capped at 1: an
        under-confident draft (the proposers cap each position's product of confidence and calibration at 1)."""
        return self.accepted / self.tested_confidence if self.tested_confidence > 0 else 1.0

    def proposes(self, position: int, reach: torch.Tensor) -> torch.Tensor | None:
        """Whether the batch verifies drafted position ``position``, as ``# [b]`` (all equal: once a position is
        verified, every row proposing it costs nothing more), ``reach  # [b]`` being each row's estimated chance of
        accepting positions 1..``position`` (0 for a row not proposing it); None while the costs are unknown and at
        a probe's first position, verified whatever it costs (every row proposes)."""
        if not self._known() or self.probing and position == 1:
            return None
        gain = float(reach.mean())
        pays = self._pays(gain, drafted=position, drafting=False)
        if pays:
            self.expected, self.verified = self.expected + gain, position
        return torch.full_like(reach, pays, dtype=torch.bool)

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
        if rest_seconds is not None and self.pending is not None:
            kind, tokens, seconds = self.pending
            past_tokens, past_seconds = self.realized[kind]
            self.realized[kind] = (MEMORY * past_tokens + tokens, MEMORY * past_seconds + seconds + rest_seconds)
        behind = self.plain_steps > 1
        if drafted and draft_seconds > 0 and self.drafted_before and not behind:
            self.draft_seconds = _ema(self.draft_seconds, draft_seconds / drafted)
        # A step's rate, once its rest is known; not for steps that read the prompt (the target's or the draft's),
        # and a draft that caught up on missed tokens is counted at its usual cost (a switch, not the regime's).
        self.pending = None
        if new_tokens and (drafted == 0 or (self.drafted_before and self.draft_seconds is not None)):
            spent = drafted * self.draft_seconds if drafted and behind else draft_seconds
            self.pending = ("draft" if drafted else "plain", 1 + float(num_accepted.float().mean()),
                            spent + target_seconds)
        self.drafted_before = self.drafted_before or drafted > 0
        self.plain_steps = 0 if drafted else self.plain_steps + 1
        if rest_seconds is not None:
            self.rest_seconds = _ema(self.rest_seconds, rest_seconds)
        if new_tokens:
            self.target_seconds[new_tokens] = _ema(self.target_seconds.get(new_tokens), target_seconds)
        self._learn(proposal, num_accepted)
        if self.memory is not None:
            self.memory.remember(self, self.batch_size)

    def _learn(self, proposal, num_accepted) -> None:
        """Add one step's tested drafts to the decayed acceptance counts."""
        drafted = proposal.ids.shape[1]
        proposed = proposal.lengths()
        if not bool((proposed > 0).any()):
            return
        positions = torch.arange(drafted, device=num_accepted.device)
        tested = (positions <= num_accepted[:, None]) & (proposal.ids >= 0)  # up to the first rejection
        confidence = proposal.confidence if proposal.confidence is not None else tested.to(torch.float32)
        self.accepted = MEMORY * self.accepted + float(num_accepted.sum())
        self.tested = MEMORY * self.tested + float(tested.sum())
        self.tested_confidence = MEMORY * self.tested_confidence + float((confidence * tested).sum())

    def _target_time(self, n: int) -> float:
        """``t(n)``: ``t(1)`` as measured, and for ``n >= 2`` a least-squares line through the forwards measured over
        2 or more tokens (one token often takes a faster matrix-vector path, so it is kept off the line); never
        decreasing."""
        ones = self.target_seconds.get(1)
        sizes = sorted(s for s in self.target_seconds if s > 1)
        if n == 1 and ones is not None or not sizes:
            return ones if ones is not None else self.target_seconds[min(self.target_seconds)]
        mean_n = sum(sizes) / len(sizes)
        mean_t = sum(self.target_seconds[s] for s in sizes) / len(sizes)
        spread = sum((s - mean_n) ** 2 for s in sizes)
        slope = sum((s - mean_n) * (self.target_seconds[s] - mean_t) for s in sizes) / spread if spread else 0.0
        line = mean_t + max(slope, 0.0) * (n - mean_n)
        return max(line, ones) if ones is not None else line


def _ema(previous: float | None, value: float) -> float:
    return value if previous is None else EMA * previous + (1 - EMA) * value
