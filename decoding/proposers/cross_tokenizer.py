"""A draft model with its own tokenizer: it reads the target's committed text and proposes target tokens.

Each step, every row's committed target tokens are decoded to text (a leading target BOS left out, other special
tokens kept as their text) and re-tokenized by the draft tokenizer (which adds its own BOS, if any). The
draft's cache keeps the longest common prefix of what it holds and that new context (its last token is always
re-read), so only the new suffix is fed: the prompt is encoded once. Two modes turn the draft's output into
target tokens (:mod:`decoding.token_maps` maps the vocabularies):

- ``"string"``: the draft decodes ``k`` tokens greedily in its own vocabulary; their text is re-tokenized by the
  target tokenizer, truncated to ``k`` target tokens per row (-1 padded). The proposal is deterministic, so its
  law is one-hot: greedy output is the target's own, and sampling is lossless too (acceptance ``p(x)``).
- ``"tli"`` (token-level intersection, Timor et al. 2025): the draft's logits are restricted to the tokens both
  vocabularies share and placed at their target ids (-inf elsewhere); the target's sampler then processes and
  samples them as it would a same-vocabulary draft, so ``q`` lives in the target's vocabulary and standard
  rejection sampling is lossless. Each drafted target token is fed back to the draft as its shared draft token.

``"auto"`` (the default) is string-level when greedy (a draft token may stand for several target tokens) and TLI
when sampling (the draft's law, not a one-hot one, so acceptance is ``min(1, p/q)``).
"""

from __future__ import annotations

import torch

from ..ragged_cache import RaggedCache
from ..token_maps import TokenMap, check_tokenizer, common_prefix, continuation, retokenize
from ..validation import check_model
from ..vocab import vocab_size
from .base import Drafter, DraftSteps, Proposal, Proposer, one_hot_probs

MODES = ("auto", "string", "tli")
TAIL_TOKENS = 8  # committed target tokens re-tokenized with a string-level proposal, so its first token fits


class CrossTokenizerDraft(Proposer):
    """A decoder-only draft model whose tokenizer differs from the target's.

    Args:
        model: the draft model (on the target's device).
        tokenizers: ``(target_tokenizer, draft_tokenizer)``, transformers tokenizers.
        mode: ``"auto"``, ``"string"`` or ``"tli"`` (module docstring).
    """

    def __init__(self, model, tokenizers, mode: str = "auto", role: str = "draft"):
        check_model(model, role)
        if mode not in MODES:
            raise ValueError(f"cross_tokenizer must be one of {MODES}, got {mode!r}")
        if not isinstance(tokenizers, (tuple, list)) or len(tokenizers) != 2:
            raise ValueError("tokenizers must be a pair (target_tokenizer, draft_tokenizer)")
        check_tokenizer(tokenizers[0], "target")
        check_tokenizer(tokenizers[1], role)
        self.model, self.tokenizers, self.mode, self.role = model, tuple(tokenizers), mode, role
        self._maps: dict = {}

    def models(self) -> dict:
        return {self.role: self.model}

    def token_map(self, target_vocab: int) -> TokenMap:
        """The shared tokens for a target of ``target_vocab`` rows (built once per size)."""
        if target_vocab not in self._maps:
            self._maps[target_vocab] = TokenMap(*self.tokenizers, target_vocab, vocab_size(self.model))
        return self._maps[target_vocab]

    def validate(self, target, input_ids, attention_mask) -> None:
        for tokenizer, model, role in ((self.tokenizers[0], target, "target"), (self.tokenizers[1], self.model, self.role)):
            largest = max(tokenizer.get_vocab().values())
            if largest >= vocab_size(model):
                raise ValueError(
                    f"the {role} tokenizer has id {largest} but the {role} model only {vocab_size(model)} rows: "
                    f"pass tokenizers=(target_tokenizer, {self.role}_tokenizer), in that order, each its model's own.")
        if self.token_map(vocab_size(target)).shared == 0:
            raise ValueError(f"the target and {self.role} tokenizers share no token (no token has the same text in "
                             "both vocabularies): these tokenizers cannot work together.")

    def start(self, run) -> CrossTokenizerDrafter:
        mode = self.mode if self.mode != "auto" else ("tli" if run.do_sample else "string")
        mapping = self.token_map(vocab_size(run.model)).to(run.prompt_mask.device)
        return CrossTokenizerDrafter(self.model, self.tokenizers, mapping, mode, run)


class CrossTokenizerDrafter(Drafter):
    """The draft's cache and, per row, the draft ids it holds (its valid slots, in order)."""

    def __init__(self, model, tokenizers, mapping: TokenMap, mode: str, run):
        batch = run.prompt_mask.shape[0]
        self.model, (self.target_tokenizer, self.draft_tokenizer) = model, tokenizers
        self.mapping, self.mode = mapping, mode
        self.cache = RaggedCache(model, batch, run.prompt_mask.device, beside=run.model)
        self.held: list[list[int]] = [[] for _ in range(batch)]  # draft ids in each row's cache
        self.pads = (1 - run.prompt_mask).sum(dim=1).tolist()  # [B] left padding, by original row
        self.filler = next((i for i in (self.draft_tokenizer.bos_token_id, self.draft_tokenizer.eos_token_id)
                            if isinstance(i, int)), 0)  # the context of a row whose text is empty

    def propose(self, run, sampler, k: int, length) -> Proposal:
        b, device = run.rows.numel(), run.rows.device
        if k == 0:
            return Proposal(ids=torch.empty(b, 0, dtype=torch.int64, device=device))
        committed, contexts = self._contexts(run)
        logits = self._sync(contexts)  # [b, V_draft]
        if self.mode == "tli":
            return self._propose_tli(run, sampler, k, length, logits)
        return self._propose_string(run, k, logits, committed, contexts)

    def _contexts(self, run) -> tuple[list[list[int]], list[list[int]]]:
        """Each active row's committed target ids (no padding) and their text re-tokenized by the draft."""
        lengths = run.sequences.lengths[run.rows].tolist()
        tokens = run.sequences.tokens[run.rows, : max(lengths)].tolist()
        committed = [row[self.pads[r]: n] for row, r, n in zip(tokens, run.rows.tolist(), lengths)]
        bos = self.target_tokenizer.bos_token_id
        texts = self.target_tokenizer.batch_decode([row[1:] if row[:1] == [bos] else row for row in committed])
        contexts = [ids or [self.filler] for ids in self.draft_tokenizer(texts, add_special_tokens=True)["input_ids"]]
        return committed, contexts

    def _sync(self, contexts: list[list[int]]) -> torch.Tensor:
        """Crop each row's cache to the longest prefix it shares with its new context (keeping the last token
        to re-read), feed the rest right-aligned; returns the next-token logits ``# [b, V_draft]``."""
        device = self.cache.mask.device
        keep = [min(common_prefix(held, ctx), len(ctx) - 1) for held, ctx in zip(self.held, contexts)]
        self.cache.keep_first(torch.tensor(keep, dtype=torch.int64, device=device))
        width = max(len(ctx) - n for ctx, n in zip(contexts, keep))
        tokens = torch.zeros(len(contexts), width, dtype=torch.int64)  # [b, width]
        valid = torch.zeros(len(contexts), width, dtype=torch.int64)
        for r, (ctx, n) in enumerate(zip(contexts, keep)):
            suffix = ctx[n:]
            tokens[r, width - len(suffix):] = torch.tensor(suffix, dtype=torch.int64)
            valid[r, width - len(suffix):] = 1
        self.held = [list(ctx) for ctx in contexts]
        return self.cache.forward(tokens.to(device), valid.to(device), logits_to_keep=1)[:, 0]

    def _read(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Feed one draft token per row ``# [b]``; returns the next logits ``# [b, V_draft]``."""
        for held, i in zip(self.held, draft_ids.tolist()):
            held.append(i)
        return self.cache.forward(draft_ids[:, None], None, logits_to_keep=1)[:, 0]

    def _propose_tli(self, run, sampler, k: int, length, logits: torch.Tensor) -> Proposal:
        """Up to ``k`` target tokens drawn from the draft's law over the shared tokens."""
        vocab = vocab_size(run.model)
        steps = DraftSteps(run, sampler, length)
        for position in range(k):
            scores = self.mapping.target_logits(logits, vocab)  # [b, V_target]
            # A row proposes only ids the draft has too (the sampler may leave the shared tokens).
            token = steps.draw(position, scores, can_propose=lambda ids: self.mapping.target_to_draft[ids] >= 0)
            if position + 1 == k or not steps.goes_on(position + 1):
                break
            logits = self._read(self.mapping.target_to_draft[token].clamp_min(0))
        return steps.proposal()

    def _propose_string(self, run, k: int, logits: torch.Tensor, committed, contexts) -> Proposal:
        """The draft's greedy ``k`` tokens, as text, re-tokenized by the target: ``ids  # [b, <=k]``, -1 padded."""
        drafts = []
        for position in range(k):
            drafts.append(logits.argmax(dim=-1))  # [b] draft ids
            if position + 1 < k:
                logits = self._read(drafts[-1])
        rows = [self._target_ids(row, ctx, tail, k)
                for row, ctx, tail in zip(torch.stack(drafts, dim=1).tolist(), contexts, committed)]
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), -1, dtype=torch.int64)  # [b, width <= k]
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row, dtype=torch.int64)
        ids = ids.to(run.rows.device)
        run.sequences.write(run.rows, 0, ids)
        probs = one_hot_probs(ids, vocab_size(run.model)) if run.do_sample else None
        return Proposal(ids=ids, probs=probs)

    def _target_ids(self, drafts: list[int], context: list[int], committed: list[int], k: int) -> list[int]:
        """One row's draft ids as at most ``k`` target ids; a draft EOS ends the text and becomes the target's."""
        eos_d, eos_t = self.draft_tokenizer.eos_token_id, self.target_tokenizer.eos_token_id
        ends = isinstance(eos_d, int) and eos_d in drafts
        if ends:
            drafts = drafts[: drafts.index(eos_d)]
        text = continuation(self.draft_tokenizer, context, drafts)
        ids = retokenize(self.target_tokenizer, committed[-TAIL_TOKENS:], text) if text else []
        if ends and isinstance(eos_t, int):
            ids.append(eos_t)
        vocab = len(self.mapping.target_to_draft)
        cut = next((n for n, i in enumerate(ids) if i >= vocab), len(ids))  # ids the target model has no row for
        return ids[: min(k, cut)]

    def select_rows(self, survivors: torch.Tensor) -> None:
        self.cache.select_rows(survivors)
        self.held = [self.held[i] for i in survivors.tolist()]

    def prepare(self, run, compact_threshold: float) -> None:
        self.cache.compact_if_holes_exceed(compact_threshold)
