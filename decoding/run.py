"""The state of one ``generate`` call that every decoding loop shares: tokens, active rows, sampler, stopping,
streaming, kept scores and statistics (:class:`Run`, built by :func:`new_run`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import hf_compat
from .processing import LogitsProcessing, Stopping, max_length
from .readout import Deferred, Readout
from .sampler import make_sampler
from .sequences import Sequences


@dataclass
class Run:
    """One call's state. ``rows  # [b]`` are the original batch indices of the rows still generating.

    ``readout`` batches the host reads of a step: what the step asks of the device is read in one transfer when
    :meth:`drop_finished` needs the finished rows (see :mod:`decoding.readout`)."""

    model: Any
    sequences: Sequences
    prompt_mask: torch.Tensor  # [B, P] int64
    sampler: Any  # decoding.sampler.ProcessorSampler or FusedSampler
    stopping: Stopping
    do_sample: bool
    streamer: Any
    keep_scores: bool
    keep_logits: bool
    stats: Any
    readout: Readout
    cache_capacity: int | None = None  # slots per row of the models' static caches (None: dynamic caches)
    # Keep finished rows in the batch, their output discarded, until half the batch has finished (fixed shapes
    # for static caches); otherwise they leave at once.
    keep_finished: bool = False
    rows: torch.Tensor = field(init=False)  # [b]
    scores: list = field(default_factory=list)  # (rows [b], counts [b], scores [b, n, V]) per step
    logits: list = field(default_factory=list)

    def __post_init__(self):
        self.rows = torch.arange(self.prompt_mask.shape[0], device=self.prompt_mask.device)
        # The active rows' lengths on the host, or as asked at the last commit.
        self._lengths: list[int] | Deferred = [self.sequences.prompt_length] * self.prompt_mask.shape[0]
        self._done: list[bool] = [False] * self.prompt_mask.shape[0]  # rows of the batch that finished and stay
        self.live: torch.Tensor | None = None  # [b'] positions of the unfinished rows when some finished row stays
        self._done_mask: torch.Tensor | None = None  # [b] bool, _done on the device (set with live)

    def remaining(self) -> int:
        """Most tokens any unfinished row may still emit (known on the host since the last step's read)."""
        return self.sequences.max_length - min(n for n, done in zip(self._row_lengths(), self._done) if not done)

    def _row_lengths(self) -> list[int]:
        if isinstance(self._lengths, Deferred):
            self._lengths = self._lengths.value
        return self._lengths

    def commit(self, output_ids: torch.Tensor, scores=None, logits=None) -> torch.Tensor:
        """Emit ``output_ids  # [b, n]`` (-1 padded), apply stopping, stream; returns ``finished  # [b]``. Rows that
        finished earlier and stay in the batch emit nothing."""
        if self.live is not None:
            output_ids = output_ids.masked_fill(self._done_mask[:, None], -1)
        if self.stopping.simple:  # stopping reads no tokens: the kept ones are written once, after it
            kept, finished = self.stopping(self.sequences, self.rows, output_ids)
            self.sequences.write_kept(self.rows, output_ids, kept)
        else:
            self.sequences.write(self.rows, 0, output_ids)
            kept, finished = self.stopping(self.sequences, self.rows, output_ids)
        if self.keep_scores:
            self.scores.append((self.rows, kept, scores))
        if self.keep_logits:
            self.logits.append((self.rows, kept, logits))
        if self.streamer is not None:
            self._stream(kept)
        self.sequences.commit(self.rows, kept, output_ids.shape[1], cleared=self.stopping.simple)
        self._lengths = self.sequences.committed  # the active rows' lengths, asked once for both
        return finished

    def _stream(self, kept: torch.Tensor) -> None:
        """Hand the streamer this step's tokens as ``[B, n]``: every row of the batch, in its place, with pads where
        a row kept fewer tokens or has finished (so a consumer can tell rows apart)."""
        pad = self.sequences.pad_token_id
        columns = self.sequences.columns(self.rows, int(kept.max()))  # [b, n]: the new tokens' columns
        new = self.sequences.tokens[self.rows[:, None], columns]
        ends = (self.sequences.lengths[self.rows] + kept)[:, None]
        step = new.new_full((self.sequences.tokens.shape[0], columns.shape[1]), pad)  # [B, n]
        step[self.rows] = torch.where(columns < ends, new, pad)
        self.streamer.put(step.cpu())

    def unfinished(self, values: torch.Tensor) -> torch.Tensor:
        """``values  # [b, ...]`` of the unfinished rows (all of them unless finished rows stay in the batch)."""
        return values if self.live is None else values[self.live]

    def drop_finished(self, finished: torch.Tensor) -> torch.Tensor | None:
        """Remove finished rows (``finished  # [b]``); returns ``survivors  # [b']``, the positions of the others
        in the old batch, or None when none leaves. This reads the step's asks from the device, in one go. With
        ``keep_finished``, finished rows stay (emitting nothing) until half the batch has finished."""
        done = [bool(d) or was for d, was in zip(self.readout.ask(finished).value, self._done)]
        lengths = self._row_lengths()
        if done == self._done:
            return None
        if self.keep_finished and not all(done) and 2 * sum(done) < len(done):
            self._done = done
            self._done_mask = torch.tensor(done, device=self.rows.device)
            self.live = torch.tensor([i for i, d in enumerate(done) if not d], device=self.rows.device)
            return None
        self._done, self.live = [False] * (len(done) - sum(done)), None
        kept = [i for i, d in enumerate(done) if not d]
        self._lengths = [lengths[i] for i in kept]
        survivors = torch.tensor(kept, dtype=torch.int64).to(self.rows.device)
        self.rows = self.rows[survivors]
        return survivors


def new_run(model, input_ids, attention_mask, processors, criteria, config, streamer, *, slack: int, stats,
            verification: str = "token", cascade=None) -> Run:
    """The :class:`Run` of a call; ``slack`` is the most columns a step writes beyond ``max_length``;
    ``verification``: ``"token"`` or ``"block"``, the rule that judges drafts when sampling; ``cascade``: a speculative
    cascade's rule, whose mixture of both laws drafts are judged by (None: the target's law)."""
    pad = hf_compat.pad_token_tensor(config)
    criteria = criteria or []
    readout = Readout()
    sequences = Sequences(input_ids, max_length(criteria, config.max_length), slack, int(pad) if pad is not None else 0,
                          readout)
    keep_scores = bool(config.return_dict_in_generate and config.output_scores)
    processing = LogitsProcessing(processors or [], input_ids.shape[0])
    return Run(
        model=model,
        sequences=sequences,
        prompt_mask=attention_mask,
        sampler=make_sampler(processing, sequences, bool(config.do_sample), keep_scores, input_ids.device,
                             verification, cascade),
        stopping=Stopping(criteria, input_ids.device),
        do_sample=bool(config.do_sample),
        streamer=streamer,
        keep_scores=keep_scores,
        keep_logits=bool(config.return_dict_in_generate and config.output_logits),
        stats=stats,
        readout=readout,
    )
