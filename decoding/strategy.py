"""The base of every strategy: what turns a strategy object into transformers' ``custom_generate`` callable.

transformers' ``generate`` does the setup (generation config, attention mask, special tokens, logits processors,
stopping criteria, ``num_return_sequences`` expansion) and then calls the strategy. This module validates that
call, builds the call's state (:class:`~decoding.run.Run`), runs the strategy's loop and returns what
transformers returns: a LongTensor ``[batch, prompt + new]`` padded with ``pad_token_id``, or a
:class:`DecodingOutput`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .run import Run, new_run
from .validation import check_call


@dataclass
class DecodingOutput(GenerateDecoderOnlyOutput):
    """transformers' ``GenerateDecoderOnlyOutput`` plus ``stats``: the statistics of this very call."""

    stats: Any = None


class Strategy:
    """Base class: subclasses implement ``decode(run)`` and ``new_stats()``.

    A strategy object holds only its settings and models; everything of one call lives in its :class:`Run`, so
    one object may serve several threads at once. ``strategy.stats`` is the statistics of the last call that
    finished (each call's own come with it in :class:`DecodingOutput` with ``return_dict_in_generate=True``).
    """

    stats: Any = None
    verification = "token"  # how sampled drafts are judged: "token" or "block" (speculative strategies)
    cascade = None  # a speculative cascade's deferral rule (decoding.cascade.Cascade): drafts are judged by its law

    def decode(self, run: Run) -> None:
        raise NotImplementedError

    def new_stats(self):
        """An empty statistics record for one call."""
        raise NotImplementedError

    def models(self) -> dict:
        """Extra models this strategy runs beside the target, by role (for validation)."""
        return {}

    def draft_length(self) -> int:
        """Most tokens a step writes beyond the committed ones before verification (0: one token per step)."""
        return 0

    def validate(self, model, generation_config, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Strategy-specific checks of one call (``input_ids``, ``attention_mask  # [B, P]``), run before any
        forward pass."""

    def __call__(self, model, input_ids: torch.LongTensor, logits_processor=None, stopping_criteria=None,
                 generation_config=None, decoding_streamer=None, **model_kwargs):
        # transformers never hands ``streamer`` to a custom_generate callable: ``enable``'s wrapper (or a caller of
        # ``custom_generate=``) passes it as ``decoding_streamer`` instead, and the prompt is streamed here.
        streamer = decoding_streamer
        if streamer is not None:
            streamer.put(input_ids.cpu())
        attention_mask = _prompt_mask(input_ids, model_kwargs)
        check_call(self, model, input_ids, attention_mask, generation_config, model_kwargs)
        self.validate(model, generation_config, input_ids, attention_mask)
        input_ids = input_ids.to(torch.int64)  # transformers accepts int32 ids too; the token buffer is int64
        run = new_run(model, input_ids, attention_mask, logits_processor, stopping_criteria, generation_config,
                      streamer, slack=self.draft_length() + 1, stats=self.new_stats(), verification=self.verification,
                      cascade=self.cascade)
        self.decode(run)
        run.stats.settle()  # statistics kept on the device during the call: read once, here
        self.stats = run.stats
        if streamer is not None:
            streamer.end()
        return _outputs(run, generation_config)


def _prompt_mask(input_ids, model_kwargs) -> torch.Tensor:
    mask = model_kwargs.get("attention_mask")
    return torch.ones_like(input_ids) if mask is None else mask.to(device=input_ids.device, dtype=torch.int64)


def _per_token(records, sequences) -> tuple | None:
    """Regroup per-step ``(rows, counts, values [b, n, V])`` into one ``[B, V]`` tensor per new token."""
    if not records:
        return None
    total = int(sequences.lengths.max()) - sequences.prompt_length
    vocab = records[0][2].shape[-1]
    out = records[0][2].new_zeros(total, sequences.tokens.shape[0], vocab)
    done = torch.zeros(sequences.tokens.shape[0], dtype=torch.int64, device=out.device)
    for rows, counts, values in records:
        for r, row in enumerate(rows.tolist()):
            n = int(counts[r])
            out[done[row] : done[row] + n, row] = values[r, :n]
            done[row] += n
    return tuple(out.unbind(0))


def _outputs(run: Run, config):
    sequences = run.sequences.output()
    if not config.return_dict_in_generate:
        return sequences
    return DecodingOutput(
        sequences=sequences,
        scores=_per_token(run.scores, run.sequences) if run.keep_scores else None,
        logits=_per_token(run.logits, run.sequences) if run.keep_logits else None,
        stats=run.stats,
    )
