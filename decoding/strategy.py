"""The base of every strategy: what turns a strategy object into transformers' ``custom_generate`` callable.

transformers' ``generate`` does the setup (generation config merging, attention mask, special tokens, logits
processors, stopping criteria, ``num_return_sequences`` expansion) and then calls the strategy with
``(model, input_ids, logits_processor=, stopping_criteria=, generation_config=, **model_kwargs)``. This module
validates that call, builds the per-call state a decoding loop needs (:class:`Run`) and turns the loop's
result into what transformers returns: a LongTensor ``[batch, prompt + new]`` padded with ``pad_token_id``, or
a ``GenerateDecoderOnlyOutput``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.generation.utils import GenerateDecoderOnlyOutput

from . import hf_compat, kernels
from .processing import LogitsProcessing, Stopping
from .sequences import Sequences
from .validation import check_call


@dataclass
class Run:
    """State of one ``generate`` call that every decoding loop shares."""

    model: object
    sequences: Sequences
    prompt_mask: torch.Tensor  # [B, P] int64
    processing: LogitsProcessing
    stopping: Stopping
    do_sample: bool
    streamer: object | None
    keep_scores: bool
    keep_logits: bool
    rows: torch.Tensor = field(init=False)  # [b] original indices of the rows still generating
    scores: list = field(default_factory=list)  # (rows [b], counts [b], scores [b, n, V]) per step
    logits: list = field(default_factory=list)

    def __post_init__(self):
        self.rows = torch.arange(self.prompt_mask.shape[0], device=self.prompt_mask.device)

    def process(self, logits: torch.Tensor, offset: int) -> torch.Tensor:
        """Processed float scores ``# [b, n, V]`` for raw ``logits  # [b, n, V]`` of the active rows."""
        return self.processing(self.sequences, self.rows, logits, offset)

    def fused_warpers(self) -> tuple[float, int, float] | None:
        """``(temperature, top_k, top_p)`` when this call takes the fused kernel route, else None.

        The route is taken when the processors are only temperature / top-k / top-p (none at all for greedy,
        whose argmax they could only perturb through rounding ties), scores are not kept for the output (the
        fused kernels never materialise processed scores) and :func:`decoding.kernels.fused_route` says so
        (kernels available, or the torch reference forced)."""
        warpers = self.processing.warpers
        if warpers is None or self.keep_scores or not kernels.fused_route(self.prompt_mask.device):
            return None
        if not self.do_sample and warpers != (1.0, 0, 1.0):
            return None
        return warpers

    def remaining(self) -> int:
        """Most tokens any active row may still emit."""
        return int((self.sequences.max_length - self.sequences.lengths[self.rows]).max())

    def commit(self, output_ids: torch.Tensor, scores=None, logits=None) -> torch.Tensor:
        """Emit ``output_ids  # [b, n]`` (-1 padded), apply stopping, stream; returns ``finished  # [b]``."""
        emitted = (output_ids >= 0).sum(dim=1)  # [b]
        self.sequences.write(self.rows, 0, output_ids)
        kept, finished = self.stopping(self.sequences, self.rows, emitted)
        if self.keep_scores:
            self.scores.append((self.rows, kept, scores))
        if self.keep_logits:
            self.logits.append((self.rows, kept, logits))
        if self.streamer is not None:
            self._stream(kept)
        self.sequences.commit(self.rows, kept, output_ids.shape[1])
        return finished

    def _stream(self, kept: torch.Tensor) -> None:
        columns = self.sequences.lengths[self.rows, None] + torch.arange(int(kept.max()), device=kept.device)
        new = self.sequences.tokens[self.rows[:, None], columns]
        pad = self.sequences.pad_token_id
        self.streamer.put(torch.where(columns < (self.sequences.lengths[self.rows] + kept)[:, None], new, pad).cpu())

    def drop(self, finished: torch.Tensor) -> torch.Tensor:
        """Remove finished rows; returns ``keep  # [b']``, the surviving positions within the old batch."""
        keep = (~finished).nonzero().squeeze(1)
        self.rows = self.rows[keep]
        return keep


class Strategy:
    """Base class: subclasses implement ``decode(run)`` and define ``stats``."""

    def decode(self, run: Run) -> None:
        raise NotImplementedError

    def models(self) -> dict:
        """Extra models this strategy runs beside the target, by role (for validation)."""
        return {}

    def validate(self, model, generation_config, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Strategy-specific checks of one call (``input_ids``, ``attention_mask  # [B, P]``), run before any
        forward pass."""

    def __call__(
        self,
        model,
        input_ids: torch.LongTensor,
        logits_processor=None,
        stopping_criteria=None,
        generation_config=None,
        decoding_streamer=None,
        **model_kwargs,
    ):
        # transformers never hands ``streamer`` to a custom_generate callable: ``enable``'s wrapper (or a caller
        # of ``custom_generate=``) passes it as ``decoding_streamer`` instead, and the prompt is streamed here.
        streamer = decoding_streamer
        if streamer is not None:
            streamer.put(input_ids.cpu())
        attention_mask = _prompt_mask(input_ids, model_kwargs)
        check_call(self, model, input_ids, attention_mask, generation_config, model_kwargs)
        input_ids = input_ids.to(torch.int64)  # transformers accepts int32 ids too; the token buffer is int64
        self.validate(model, generation_config, input_ids, attention_mask)
        run = _make_run(self, model, input_ids, attention_mask, logits_processor, stopping_criteria,
                        generation_config, streamer)
        self.decode(run)
        if streamer is not None:
            streamer.end()
        return _outputs(run, generation_config)


def _prompt_mask(input_ids, model_kwargs) -> torch.Tensor:
    mask = model_kwargs.get("attention_mask")
    return torch.ones_like(input_ids) if mask is None else mask.to(device=input_ids.device, dtype=torch.int64)


def _make_run(strategy, model, input_ids, attention_mask, processors, criteria, config, streamer) -> Run:
    pad = hf_compat.pad_token_tensor(config)
    pad_id = int(pad) if pad is not None else 0
    eos = hf_compat.eos_token_tensor(config)
    slack = getattr(strategy, "num_draft_tokens", 0) + 1
    return Run(
        model=model,
        sequences=Sequences(input_ids, config.max_length, slack, pad_id),
        prompt_mask=attention_mask,
        processing=LogitsProcessing(processors or [], input_ids.shape[0]),
        stopping=Stopping(criteria or [], None if eos is None else eos.to(input_ids.device).reshape(-1)),
        do_sample=bool(config.do_sample),
        streamer=streamer,
        keep_scores=bool(config.return_dict_in_generate and config.output_scores),
        keep_logits=bool(config.return_dict_in_generate and config.output_logits),
    )


def _per_token(records, sequences: Sequences):
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
    return GenerateDecoderOnlyOutput(
        sequences=sequences,
        scores=_per_token(run.scores, run.sequences) if run.keep_scores else None,
        logits=_per_token(run.logits, run.sequences) if run.keep_logits else None,
    )
