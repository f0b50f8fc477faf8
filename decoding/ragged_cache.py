"""One model's KV cache shared by ragged rows: attention-mask holes, explicit positions, crop and compaction.

Rows of a batch accept different numbers of draft tokens per step, yet their keys and values live in one
rectangular ``DynamicCache`` of ``T`` slots. Each slot is valid (mask 1) or a hole (mask 0): a left pad of the
prompt, a rejected draft token, or a slot fed only to keep the batch rectangular. Positions are explicit,
``position = number of valid slots before it``, so a row decodes exactly as if its valid slots were contiguous.
After a step, slots that are invalid in every row at the right end are cropped (at batch size 1 this is a plain
crop and no hole ever remains); the rest stay as holes until :meth:`RaggedCache.compact` moves each row's valid
slots to the right end. With a ``capacity``, the cache is transformers' ``StaticCache``: every forward sees keys,
values and a mask of ``capacity`` slots (fixed shapes, for ``torch.compile`` / CUDA graphs), written in place.
See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib

import torch

from . import hf_compat
from .few_rows import few_rows_layout, swappable_layers
from .readout import Deferred, Readout


class RaggedCache:
    """A model, its ``DynamicCache`` and the validity mask of every cached slot.

    Attributes:
        mask: ``# [b, T]`` int64, 1 where the slot holds a token of the row, 0 for a hole.
        num_valid: ``# [b]`` int64, valid slots per row (the next token's position).
    """

    def __init__(self, model, batch_size: int, device: torch.device, readout: Readout | None = None,
                 capacity: int | None = None, beside=None):
        self.model = model
        # A static cache's slots per row (None: a DynamicCache that grows); it grows only when compaction cannot
        # make room.
        self.capacity = capacity
        # Host reads go through ``readout``: a rollback's crop waits for the step's one read (the loop's readout),
        # or reads at once when it is the cache's own.
        self.readout = readout if readout is not None else Readout()
        self._crop: tuple[Deferred, int] | None = None  # (read [used, longest], n): the crop of keep_last
        self._longest: int | Deferred | None = None  # max(num_valid): on the host, asked, or unknown
        self._longest_bound: int | Deferred | None = None  # >= max(num_valid), when rows left since it was known
        if capacity is not None:
            hf_compat.check_static_cache(model, "model")
        self.cache = hf_compat.new_cache(model) if capacity is None else hf_compat.new_static_cache(model, capacity)
        self.mask = torch.zeros(batch_size, 0, dtype=torch.int64, device=device)
        self.num_valid = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self._slices_logits = hf_compat.supports_logits_to_keep(model)
        # A CPU model's linear layers: W @ h^T over a few rows (``beside``: a draft's target, see few_rows).
        self._few_rows = swappable_layers(model, beside)
        # Sliding windows are measured in slots: such a model's rows keep their valid slots contiguous.
        self.contiguous = hf_compat.uses_sliding_window(model)
        # A sliding window is part of the model's own mask, and a draft head builds its own: 2D masks for those.
        self._plain_masks = not self.contiguous and not getattr(model, "reads_2d_mask", False)
        # With those masks, grouped-query attention without transformers' copy of the cache per forward.
        self._packs = self._plain_masks and hf_compat.packs_grouped_queries(model)
        self.fed = torch.zeros(batch_size, 0, dtype=torch.int64, device=device)  # [b, <=T] valid flags, as fed
        # Whether holes may have grown since compact_if_holes_exceed last looked (a step that only appends one
        # valid token per row cannot grow them: the check, a host sync, is skipped then).
        self.holes_may_have_grown = True
        self._full_tail = 0  # how many of the last slots hold a token in every row, known on the host
        self._check_layers()

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor | None, logits_to_keep: int) -> torch.Tensor:
        """Append ``tokens  # [b, n]`` (``valid  # [b, n]`` marks real ones; None: every one is) and return the
        last logits.

        Returns ``# [b, logits_to_keep, V]`` raw logits of the model, on the device of ``tokens``.
        """
        if not self.contiguous:
            return self._logits(self._append(tokens, valid, logits_to_keep), logits_to_keep, tokens)
        valid = torch.ones_like(tokens) if valid is None else valid.to(torch.int64)
        if bool(_holes_before_valid(valid).any()):
            logits = self._forward_valid_first(tokens, valid, logits_to_keep)
        else:
            logits = self._logits(self._append(tokens, valid, logits_to_keep), logits_to_keep, tokens)
        self.fed = torch.cat([self.fed, valid], dim=1)[:, -(self.mask.shape[1] + valid.shape[1]) :]
        return logits

    def forward_with_features(self, tokens: torch.Tensor, valid: torch.Tensor, logits_to_keep: int,
                              layers: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`, plus the hidden states ``# [b, n, len(layers) * H]`` at every fed position of the
        layers ``layers`` (indices into transformers' ``hidden_states``: 0 the embeddings, ``i`` the output of
        decoder layer ``i - 1``), concatenated in that order; None when ``layers`` is empty."""
        if not layers:
            return self.forward(tokens, valid, logits_to_keep), None
        if self.contiguous:
            raise ValueError("a proposer that reads the target's hidden states needs a target with full attention "
                             "in every layer (sliding-window targets are not supported)")
        out = self._append(tokens, valid, logits_to_keep, output_hidden_states=True)
        features = torch.cat([out.hidden_states[i] for i in layers], dim=-1).to(tokens.device)
        return self._logits(out, logits_to_keep, tokens), features

    @staticmethod
    def _logits(out, logits_to_keep: int, tokens: torch.Tensor) -> torch.Tensor:
        """The last ``logits_to_keep`` positions' logits of a model output, on the device of ``tokens``."""
        logits = out.logits if out.logits.shape[1] == logits_to_keep else out.logits[:, -logits_to_keep:]
        return logits.to(tokens.device)

    def _append(self, tokens: torch.Tensor, valid: torch.Tensor | None, logits_to_keep: int, **inputs):
        """:meth:`forward`'s work: the tokens go in the next ``n`` slots (``valid`` None: all real), with further
        model ``inputs``; returns the model's output."""
        self._settle()  # the last rollback's crop first: the new slots follow the kept ones
        n = tokens.shape[1]
        self._make_room(n)
        if valid is None:  # known on the host: fewer operations (a draft's own tokens)
            positions = self.num_valid[:, None] if n == 1 else self.num_valid[:, None] + torch.arange(
                n, device=tokens.device)
            mask = torch.cat([self.mask, torch.ones_like(tokens)], dim=1)  # [b, T + n]
            added = n
        else:
            valid = valid.to(torch.int64)
            positions = (self.num_valid[:, None] + valid.cumsum(dim=1) - 1).clamp_min(0)  # [b, n]
            mask = torch.cat([self.mask, valid], dim=1)  # [b, T + n]
            added = valid.sum(dim=1)
        extra = {"logits_to_keep": logits_to_keep} if self._slices_logits else {}
        first = self.mask.shape[1] == 0
        if first and self.capacity is None and self._plain_masks and (valid is None or bool(valid.all())):
            attention_mask = None  # a prompt without padding: causal attention needs no mask (SDPA's fastest path)
        elif self._plain_masks:  # a 4D mask: fewer operations than transformers' own, never read from the device
            attention_mask = hf_compat.prepared_mask(self.model, mask, n, self.capacity)
        else:
            attention_mask = mask
        # Packing saves copying the cached keys; over a prompt (nothing cached) its longer queries cost more.
        packed = hf_compat.packed_grouped_queries(self.model) if self._packs and not first else contextlib.nullcontext()
        with few_rows_layout(self._few_rows), packed:  # a CPU model's layers over a few rows: W @ h^T, up to 3x faster
            out = hf_compat.forward_with_cache(
                self.model, self.cache, input_ids=tokens, attention_mask=attention_mask, position_ids=positions,
                use_cache=True, **extra, **inputs,
            )
        self.mask = mask
        self.num_valid = self.num_valid + added
        self._full_tail = self._full_tail + n if valid is None else 0
        self.holes_may_have_grown |= tokens.shape[1] > 1
        # Holes may have grown: compaction will want the longest row, asked now so that it comes with the step's read.
        self._longest = self.readout.ask(self.num_valid.max()) if tokens.shape[1] > 1 else None
        self._longest_bound = None
        return out

    def _make_room(self, n: int) -> None:
        """A static cache about to overflow is compacted, and grown when that frees too little (each a host read,
        rare: the capacity covers a call's tokens and the holes compaction allows)."""
        if self.capacity is None or self.mask.shape[1] + n <= self.capacity:
            return
        self.compact()
        if self.mask.shape[1] + n > self.capacity:
            self.capacity = max(2 * self.capacity, self.mask.shape[1] + n)
            hf_compat.grow_static_cache(self.cache, self.capacity)

    def forward_outputs(self, tokens: torch.Tensor, valid: torch.Tensor | None, **inputs):
        """Append ``tokens  # [b, n]`` (``valid  # [b, n]``, None: all real) with further model inputs (a draft
        head's features) and return the model's whole output, every position's logits included (full-attention
        models only)."""
        return self._append(tokens, valid, 0, **inputs)

    def _forward_valid_first(self, tokens: torch.Tensor, valid: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        """:meth:`forward` for a sliding-window model fed holes before valid tokens: each row's valid tokens go
        first (so they follow its cached slots without a gap), the cache is compacted after, and the logits are
        returned in the columns the tokens were given in."""
        n = tokens.shape[1]
        order = torch.sort(1 - valid, dim=1, stable=True).indices  # [b, n]: valid columns first, in order
        out = self._append(tokens.gather(1, order), valid.gather(1, order), n)
        logits = self._logits(out, n, tokens)  # [b, n, V]
        self._compact_if_not_contiguous()
        back = order.argsort(dim=1)[:, :, None].expand(-1, -1, logits.shape[-1])
        return logits.gather(1, back)[:, n - logits_to_keep :]

    def keep_last(self, keep: torch.Tensor) -> None:
        """Turn the last ``n`` slots into holes where ``keep  # [b, n]`` is False, then crop shared holes.

        ``keep`` must be a prefix in every row (the first ``k`` of the last ``n`` slots): positions were fixed
        when the slots were fed, so keeping a slot after a dropped one would leave a gap in its row's positions.
        """
        n = keep.shape[1]
        if n == 0:
            return
        self._settle()
        self.holes_may_have_grown = True
        if self.contiguous:  # slots may have moved since they were fed: drop each row's last valid ones
            dropped = (self.fed[:, -n:] * (~keep).to(torch.int64)).sum(dim=1)  # [b]
            self.keep_first(self.num_valid - dropped)
            return
        if n <= self._full_tail:  # the last n slots all hold tokens (known on the host): fewer operations
            kept = keep.sum(dim=1)  # [b]
            self.num_valid = self.num_valid + kept - n
            self.mask = torch.cat([self.mask[:, :-n], keep.to(torch.int64)], dim=1)
            self._crop_shared_holes(n, used=kept.max())
            return
        tail = self.mask[:, -n:] * keep.to(torch.int64)  # [b, n]
        self.num_valid = self.num_valid - (self.mask[:, -n:] - tail).sum(dim=1)
        self.mask = torch.cat([self.mask[:, :-n], tail], dim=1)
        self._crop_shared_holes(n)

    def keep_first(self, counts: torch.Tensor) -> None:
        """Keep only the first ``counts  # [b]`` valid slots of each row (later ones become holes), then crop the
        slots that are holes in every row at the right end. A row then continues from its ``counts[r]``-th token."""
        self._settle()
        self.holes_may_have_grown = True
        self.mask = self.mask * (self.mask.cumsum(dim=1) <= counts[:, None]).to(torch.int64)
        if self.contiguous:  # the fed tokens dropped are each row's last ones
            dropped = (self.num_valid - counts).clamp_min(0)
            self.fed = self.fed * (self.fed.flip(1).cumsum(dim=1).flip(1) > dropped[:, None]).to(torch.int64)
        self.num_valid = torch.minimum(self.num_valid, counts)
        self._crop_shared_holes(self.mask.shape[1])

    def _crop_shared_holes(self, n: int, used: torch.Tensor | None = None) -> None:
        """Crop, among the last ``n`` slots, those at the right end that are holes in every row: asked of the
        readout now, done when the cache is next used (a sliding-window model's, at once). ``used``: the last of
        them some row holds (1-based), when the caller knows it."""
        self._full_tail = 0
        if n == 0:
            self._compact_if_not_contiguous()
            return
        if used is None:
            column_used = self.mask[:, self.mask.shape[1] - n :].any(dim=0)  # [n]
            used = (column_used * torch.arange(1, n + 1, device=column_used.device)).max()  # last used, 1-based
        longest = self.num_valid.max() if self.num_valid.numel() else used.new_zeros(())
        self._crop = (self.readout.ask(torch.stack([used, longest])), n)
        if self.contiguous:
            self._settle()

    def _settle(self) -> None:
        """Do the crop :meth:`_crop_shared_holes` asked for (its values read by now, or read here)."""
        if self._crop is None:
            return
        (used, self._longest), n = self._crop[0].value, self._crop[1]
        self._crop = None
        if used < n:
            hf_compat.crop_cache(self.cache, n - used)
            self.mask = self.mask[:, : self.mask.shape[1] - (n - used)]
        self._compact_if_not_contiguous()

    def _compact_if_not_contiguous(self) -> None:
        """For a sliding-window model, :meth:`compact` when some row has a hole after its first valid slot."""
        if self.contiguous and bool(_holes_before_valid(self.mask.flip(1)).any()):
            self.compact()

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows  # [b']`` of the batch (finished rows leave the batch)."""
        self._settle()
        hf_compat.select_cache_rows(self.cache, rows)
        self.holes_may_have_grown = True
        # The longest row of the old batch bounds the new one's: enough to decide on compaction without a read.
        self._longest_bound, self._longest = self._longest, None
        self.fed = self.fed[rows]
        self.mask = self.mask[rows]
        self.num_valid = self.num_valid[rows]

    def holes(self, at_least: bool = False) -> int:
        """Slots that compaction would free: ``T`` minus the longest row's valid count. ``at_least``: a lower bound
        will do, known without a read when rows just left (the old batch's longest row bounds the new one's)."""
        self._settle()
        if not self.mask.shape[0]:
            return 0
        if not at_least or self._longest is not None or self._longest_bound is None:
            return self.mask.shape[1] - self.longest()
        self._longest_bound = _on_host(self._longest_bound)
        return self.mask.shape[1] - self._longest_bound

    def longest(self) -> int:
        """The most valid slots of any row (read from the device only when the last rollback did not tell)."""
        self._longest = int(self.num_valid.max()) if self._longest is None else _on_host(self._longest)
        return self._longest

    def compact_if_holes_exceed(self, threshold: float) -> None:
        """:meth:`compact` when the holes compaction would free exceed ``threshold`` of the slots."""
        if not self.holes_may_have_grown:
            return
        self.holes_may_have_grown = False
        if self.mask.shape[0] and self.holes(at_least=True) > threshold * self.mask.shape[1]:
            self.compact()

    def compact(self) -> None:
        """Move every row's valid slots, in order, to the right end; what is left of them becomes left padding."""
        self._settle()
        width = self.longest()
        # A stable sort of the 0/1 mask puts holes first and keeps valid slots in order.
        order = torch.sort(self.mask, dim=1, stable=True).indices[:, self.mask.shape[1] - width :]  # [b, width]
        self.mask = self.mask.gather(1, order)
        self._full_tail = 0
        hf_compat.gather_cache_slots(self.cache, order)

    def _check_layers(self) -> None:
        unsupported = hf_compat.rollback_unsupported_layers(self.cache)
        if unsupported:
            raise ValueError(
                f"{type(self.model).__name__} uses a {unsupported[0]} cache layer; speculative and contrastive "
                "strategies need DynamicLayer caches, whose slots can be rolled back (full or sliding-window "
                "attention). Linear-attention and quantized caches are not supported."
            )


def _on_host(value: int | Deferred) -> int:
    """A count known on the host, or asked of the readout (its value read by now, or read here)."""
    return value.value[0] if isinstance(value, Deferred) else value


def _holes_before_valid(valid: torch.Tensor) -> torch.Tensor:
    """Rows ``# [b]`` of ``valid  # [b, n]`` that have a hole (0) before some valid slot (1)."""
    return (valid.cumsum(dim=1) < valid.sum(dim=1, keepdim=True)).logical_and(valid == 0).any(dim=1)
