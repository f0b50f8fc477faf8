"""A draft head that reads the target's hidden states (:class:`~decoding.proposers.eagle_head.Eagle3Head`).

The target's verification forward already computes the features the head reads: the loop hands them over
(:class:`~decoding.proposers.base.TargetFeatures`), no extra target pass. After each step the head's cache drops the
positions it drafted from its own states, and it reads the pairs the step committed, ``(feature of token j, token
j + 1)``: the committed tokens the target read and the accepted drafts, each with the token that followed it (the
last one with the step's recovered or bonus token). Its output at the last pair predicts the next step's first
draft; further drafts read the head's own output state. Drafts are proposed from the head's law over its draft
vocabulary, zero elsewhere, so verification stays exact.
"""

from __future__ import annotations

import torch

from .. import hf_compat
from ..ragged_cache import RaggedCache
from ..validation import check_model
from ..vocab import vocab_size
from .base import Drafter, DraftSteps, Proposal, Proposer, TargetFeatures
from .eagle_head import Eagle3Head, feature_layers


class FeatureDraft(Proposer):
    """Drafts with ``head``, an :class:`Eagle3Head` trained on the target it serves."""

    role = "draft head"

    def __init__(self, head: Eagle3Head):
        check_model(head, self.role)
        if not isinstance(head, Eagle3Head):
            raise TypeError(f"FeatureDraft needs an Eagle3Head (decoding.model_pairs.eagle.load_head), got "
                            f"{type(head).__name__}")
        self.head = head

    def models(self) -> dict:
        return {self.role: self.head}

    def validate(self, target, input_ids, attention_mask) -> None:
        config, head = target.config.get_text_config(), self.head.config
        if hf_compat.uses_sliding_window(target):
            raise ValueError("a draft head reads the target's hidden states of every position it verifies, which a "
                             "target with sliding-window layers does not keep in place: use a full-attention target")
        layers = self.layers(target)
        if max(layers) > config.num_hidden_layers or min(layers) < 0:
            raise ValueError(f"the draft head reads the target's hidden states {layers}, but the target has "
                             f"{config.num_hidden_layers} layers (hidden states 0 to {config.num_hidden_layers})")
        expected = getattr(head, "target_hidden_size", None) or head.hidden_size
        if config.hidden_size != expected:
            raise ValueError(f"the draft head was trained on a target of hidden size {expected}, but this target's is "
                             f"{config.hidden_size}: use the head trained for this target")
        if head.vocab_size != vocab_size(target) or int(self.head.target_ids().max()) >= vocab_size(target):
            raise ValueError(f"the draft head maps its draft vocabulary into {head.vocab_size} target ids, but the "
                             f"target has {vocab_size(target)}: use the head trained for this target")

    def layers(self, target) -> tuple[int, ...]:
        """The target layers the head reads: its config's, else EAGLE-3's choice for the target's depth."""
        return self.head.target_layers or feature_layers(target.config.get_text_config().num_hidden_layers)

    def start(self, run) -> FeatureDrafter:
        return FeatureDrafter(self.head, run, self.layers(run.model))


class FeatureDrafter(Drafter):
    """The head's cache and the pairs it has yet to read, for the rows of one call."""

    def __init__(self, head: Eagle3Head, run, layers: tuple[int, ...]):
        batch, device = run.prompt_mask.shape[0], run.prompt_mask.device
        self.head, self.target_layers = head, layers
        self.embed = head.embed_tokens if head.embed_tokens is not None else run.model.get_input_embeddings()
        self.cache = RaggedCache(head, batch, device, run.readout, beside=run.model)
        self.target_ids = head.target_ids()  # [V_draft]
        self.features = None  # [b, n, F]: the last target forward's features, not yet read
        self.kept = None  # [b, n] bool: the columns of those the rows committed
        self.counts = None  # [b]: pairs per row to read (the kept columns)
        self.width = None  # max(counts), asked of the step's readout
        self.next = None  # (logits [b, V_draft], hidden [b, H]) after the last committed token
        self.spoken = 0  # positions the head cached from its own states this step (dropped before reading)

    def accept(self, num_accepted: torch.Tensor, features: TargetFeatures | None = None) -> None:
        """Forget this step's drafts in the head's cache; keep the target's features of the committed columns."""
        self.cache.keep_last(torch.zeros(num_accepted.numel(), self.spoken, dtype=torch.bool,
                                         device=num_accepted.device))
        self.spoken = 0
        n = features.values.shape[1]
        columns = torch.arange(n, device=num_accepted.device)
        kept = columns < (n - features.drafted + num_accepted)[:, None]  # [b, n]: the committed columns
        self._keep(features.values, kept if features.valid is None else features.valid.bool() & kept)

    def select_rows(self, survivors: torch.Tensor) -> None:
        self.cache.select_rows(survivors)
        if self.features is not None:
            self._keep(self.features[survivors], self.kept[survivors])

    def _keep(self, features: torch.Tensor, kept: torch.Tensor) -> None:
        """Hold ``features  # [b, n, F]`` with the columns to read ``kept  # [b, n]``; their widest row is asked."""
        self.features, self.kept, self.counts = features, kept, kept.sum(dim=1)
        self.width = self.cache.readout.ask(self.counts.max())

    def prepare(self, run, compact_threshold: float) -> None:
        self.cache.compact_if_holes_exceed(compact_threshold)

    def _read_pending(self, run) -> None:
        """Read the pairs the last step committed, right-aligned: ``(feature of column c, the committed token after
        it)``; the output at the last one is :attr:`next`."""
        counts = self.counts  # [b] pairs per row (>= 1: a step commits a token per row)
        width = self.width.value[0]
        first = self.kept.to(torch.int8).argmax(dim=1)  # [b] each row's first kept column (they are contiguous)
        slots = torch.arange(width, device=counts.device)  # [width]
        valid = slots >= (width - counts)[:, None]  # [b, width]
        source = (first[:, None] + slots - (width - counts)[:, None]).clamp(0, self.kept.shape[1] - 1)
        features = self.features.gather(1, source[..., None].expand(-1, -1, self.features.shape[-1]))
        tokens = run.sequences.window(run.rows, width)  # [b, width]: each row's last committed tokens
        out = self.cache.forward_outputs(tokens, valid, features=features.to(self.head.dtype),
                                         inputs_embeds=self.embed(tokens).to(self.head.dtype))
        self.next = out.logits[:, -1], out.hidden[:, -1]
        self.features = self.kept = self.counts = None

    def propose(self, run, sampler, k: int, length) -> Proposal:
        if self.features is not None:
            self._read_pending(run)
        b, device = run.rows.numel(), run.rows.device
        if k == 0 or self.next is None:  # the first step: the target has yet to read the prompt
            return Proposal(ids=torch.empty(b, 0, dtype=torch.int64, device=device), probs=None)
        vocab = vocab_size(run.model)
        steps = DraftSteps(run, sampler, length)
        logits, hidden = self.next
        for position in range(k):
            scores = logits.new_full((b, vocab), float("-inf"))  # the head's law is zero off its draft vocabulary
            scores[:, self.target_ids] = logits
            token = steps.draw(position, scores)
            if position + 1 == k or not steps.goes_on(position + 1):
                break
            logits, hidden = self._speak(token, hidden)
        return steps.proposal()

    def _speak(self, token: torch.Tensor, hidden: torch.Tensor):
        """The head reads its own draft ``token  # [b]`` with its own state ``hidden  # [b, H]``."""
        tokens = token[:, None]
        out = self.cache.forward_outputs(tokens, None, features=hidden[:, None],
                                         inputs_embeds=self.embed(tokens).to(self.head.dtype))
        self.spoken += 1
        return out.logits[:, -1], out.hidden[:, -1]
