"""Logits processing and stopping for ragged rows, on top of transformers' own processors and criteria.

transformers builds the ``LogitsProcessorList`` (temperature, top-k, top-p, min-p, repetition penalty,
min-new-tokens, bad words, ...) and the ``StoppingCriteriaList`` (max length, EOS, stop strings, max time)
from the generation config; strategies reuse them unchanged. Processors that read only the scores run once
over every row and position at once; any other processor makes each call go through per-length groups of
row views (see :mod:`decoding.sequences`), so a row at any draft position sees what transformers' own loop
would show it there.
"""

from __future__ import annotations

import functools

import torch
from transformers import LogitsProcessorList
from transformers.generation import logits_process as lp
from transformers.generation import stopping_criteria as sc

from . import hf_compat
from .kernels.reference import compute_dtype
from .sequences import Sequences, apply_per_view

# Processors whose output depends on the scores alone, never on input_ids (tests/test_processing.py checks it).
# Matched by exact type: a subclass may read input_ids (tests/test_user_hooks.py), so it takes the general path.
SCORE_ONLY_PROCESSORS = (
    lp.TemperatureLogitsWarper,
    lp.TopKLogitsWarper,
    lp.TopPLogitsWarper,
    lp.MinPLogitsWarper,
    lp.TypicalLogitsWarper,
    lp.EpsilonLogitsWarper,
    lp.EtaLogitsWarper,
    lp.SuppressTokensLogitsProcessor,
    lp.InfNanRemoveLogitsProcessor,
    lp.LogitNormalization,
)

# Processors that cannot be applied row by row here, with the reason given to the user.
UNSUPPORTED_PROCESSORS = {
    lp.PrefixConstrainedLogitsProcessor: "prefix_allowed_tokens_fn needs batch ids that ragged rows do not keep",
    lp.UnbatchedClassifierFreeGuidanceLogitsProcessor: "classifier-free guidance runs the model a second time",
}

SIMPLE_STOPPING = (sc.MaxLengthCriteria, sc.EosTokenCriteria)


class LogitsProcessing:
    """Apply a ``LogitsProcessorList`` to ``logits  # [b, n, V]`` of ragged rows; returns float32 scores."""

    def __init__(self, processors, batch_size: int):
        for processor in processors:
            for kind, reason in UNSUPPORTED_PROCESSORS.items():
                if isinstance(processor, kind):
                    raise ValueError(f"{type(processor).__name__} is not supported with a strategy: {reason}.")
        self.processors = processors
        self.batch_size = batch_size
        self.score_only = all(type(p) in SCORE_ONLY_PROCESSORS for p in processors)
        self.has_row_state = any(hf_compat.per_row_state(p) for p in processors)
        self.warpers = warper_settings(processors)

    def __call__(self, sequences: Sequences, rows: torch.Tensor, logits: torch.Tensor, offset: int) -> torch.Tensor:
        """Position ``i`` of row ``r`` is processed with view ``offset + i`` of that row."""
        scores = logits.to(compute_dtype(logits), copy=True)
        if not self.processors:
            return scores
        batch, n, vocab = scores.shape
        if self.score_only:
            no_ids = torch.empty(batch * n, 0, dtype=torch.int64, device=scores.device)
            return self.processors(no_ids, scores.reshape(batch * n, vocab)).reshape(batch, n, vocab)
        columns = [apply_per_view(functools.partial(self._process_view, rows, scores[:, i]), sequences, rows, offset + i)
                   for i in range(n)]
        return torch.stack(columns, dim=1)

    def _process_view(self, rows: torch.Tensor, scores: torch.Tensor, members: torch.Tensor, input_ids: torch.Tensor):
        """Processed ``scores[members]  # [m, V]`` of the group of rows ``rows[members]`` whose views are ``input_ids``."""
        return self._for_rows(rows[members])(input_ids, scores[members])

    def _for_rows(self, rows: torch.Tensor) -> LogitsProcessorList:
        """The processors as they must act on the batch rows ``rows  # [m]`` alone."""
        if not self.has_row_state:
            return self.processors
        return LogitsProcessorList(hf_compat.restrict_to_rows(p, rows, self.batch_size) for p in self.processors)


def warper_settings(processors) -> tuple[float, int, float] | None:
    """``(temperature, top_k, top_p)`` when ``processors`` are only transformers' temperature, top-k and top-p
    warpers, at most one of each, in ``generate``'s order and with their default filter value and
    ``min_tokens_to_keep`` folded in (``top_k = 0`` / ``top_p = 1.0`` when absent); None for anything else.

    The fused kernels (:func:`decoding.kernels.ops.verify`, ``sample_logits``, ``contrastive_choose``) apply exactly
    these three on the fly; any other processor keeps a strategy on the general path.
    """
    order = ("temperature", "top_k", "top_p")  # generate's order
    settings = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    last = -1
    for processor in processors:
        found = hf_compat.warper_parameters(processor)
        if found is None:
            return None
        name, value, filter_value, min_tokens_to_keep = found
        if order.index(name) <= last or filter_value != -float("inf") or min_tokens_to_keep != 1:
            return None
        last = order.index(name)
        settings[name] = value
    return settings["temperature"], settings["top_k"], settings["top_p"]


def max_length(criteria, default: int) -> int:
    """The length at which the criteria stop every row: the tightest ``MaxLengthCriteria`` among them (a user's
    replaces the one ``generate`` builds from the config), else ``default``."""
    return min((c.max_length for c in criteria if isinstance(c, sc.MaxLengthCriteria)), default=default)


def eos_token_ids(criteria, device) -> torch.Tensor | None:
    """Every id that an ``EosTokenCriteria`` among the criteria stops on, ``# [k]``; None when there is none."""
    ids = [c.eos_token_id.reshape(-1) for c in criteria if isinstance(c, sc.EosTokenCriteria)]
    return torch.cat(ids).to(device=device, dtype=torch.int64) if ids else None


class Stopping:
    """Apply a ``StoppingCriteriaList`` to the tokens rows emit in one step, token by token.

    When every criterion is a ``MaxLengthCriteria`` or an ``EosTokenCriteria`` (``generate``'s own, or the user's
    in their place) a step is judged at once from their lengths and ids (see :func:`max_length`, which sizes the
    :class:`~decoding.sequences.Sequences`); any other criterion is called on each row's view, token by token.
    """

    def __init__(self, criteria, device):
        self.criteria = criteria
        self.eos_token_ids = eos_token_ids(criteria, device)
        self.simple = all(isinstance(c, SIMPLE_STOPPING) for c in criteria)

    def __call__(self, sequences: Sequences, rows: torch.Tensor, new_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens to keep and whether each row finished, for ``new_ids  # [b, n]`` (-1 padded) written after the
        committed ones. A row keeps the token that stops it (an EOS is kept, as transformers does)."""
        emitted = (new_ids >= 0).sum(dim=1)  # [b]
        budget = sequences.max_length - sequences.lengths[rows]  # [b]
        kept = torch.minimum(emitted, budget)
        finished = emitted >= budget
        if self.simple:
            return self._first_eos(new_ids, kept, finished)
        for offset in range(int(kept.max())):
            # Rows that reach max_length in this step are checked too: a criterion may stop them earlier.
            live = (offset < kept).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            done = apply_per_view(self._done, sequences, rows[live], offset + 1)
            stop = live[done]
            kept[stop] = offset + 1
            finished[stop] = True
        return kept, finished

    def _done(self, _members: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return self.criteria(input_ids, None).to(torch.bool)

    def _first_eos(self, new_ids, kept, finished):
        if self.eos_token_ids is None:
            return kept, finished
        positions = torch.arange(new_ids.shape[1], device=new_ids.device)
        is_eos = torch.isin(new_ids, self.eos_token_ids) & (positions < kept[:, None])  # [b, n]
        has_eos = is_eos.any(dim=1)
        first = is_eos.to(torch.int8).argmax(dim=1)
        return torch.where(has_eos, first + 1, kept), finished | has_eos
