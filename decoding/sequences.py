"""Per-row token buffer of a generation: the padded prompt, each row's committed tokens, room for drafts.

Row ``r`` has committed ``lengths[r]`` tokens (prompt padding included, as in transformers' own ``input_ids``);
draft tokens are written right after them while a step is verified and cleared again if rejected. The
*view* of row ``r`` at offset ``i`` is ``tokens[r, :lengths[r] + i]``: exactly the ``input_ids`` row that
transformers' own decoding loop passes to logits processors and stopping criteria at that point. Rows whose
views have the same length are handed to processors together, so every processor sees true per-row lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from .readout import Readout


# Columns the buffer starts with beyond the prompt; it doubles as rows grow (a huge max_new_tokens that an EOS
# cuts short allocates nothing up front).
INITIAL_ROOM = 256


class Sequences:
    """Token buffer ``tokens  # [B, width]`` and committed ``lengths  # [B]``; ``width`` grows on demand up to
    ``max_length + slack``.

    ``rows  # [b]`` always names the active rows (original batch indices) an operation applies to.
    """

    def __init__(self, prompt: torch.Tensor, max_length: int, slack: int, pad_token_id: int,
                 readout: Readout | None = None):
        batch, prompt_length = prompt.shape
        self.prompt_length = prompt_length
        self.max_length = max_length
        self.pad_token_id = pad_token_id
        self.capacity = max(max_length, prompt_length) + slack
        self.tokens = prompt.new_full((batch, min(prompt_length + INITIAL_ROOM + slack, self.capacity)), pad_token_id)
        self.tokens[:, :prompt_length] = prompt
        self.lengths = torch.full((batch,), prompt_length, dtype=torch.int64, device=prompt.device)
        self.readout = readout if readout is not None else Readout()
        self._longest = prompt_length  # max(lengths) on the host, as of the last read
        self._bound = prompt_length  # max(lengths) or more: what writes reserve room for, known without a read
        # The lengths of the rows the last commit advanced, asked of the readout (None: folded into _longest).
        self.committed = None

    @property
    def longest(self) -> int:
        """``max(lengths)``: the longest row, prompt included (read with the step's asks)."""
        if self.committed is not None:
            self._fold()
        return self._longest

    def _fold(self) -> None:
        """Take in the lengths of the last commit (read from the device)."""
        self._longest = max(self._longest, *self.committed.value)
        self._bound, self.committed = self._longest, None

    def _reserve(self, columns_past_bound: int) -> None:
        """Make the buffer at least ``columns_past_bound`` wider than the longest row can be (doubling, capped at
        the capacity); the bound tightens for free once the last commit's lengths have been read."""
        if self.committed is not None and self.committed.ready:
            self._fold()
        columns = self._bound + columns_past_bound
        width = self.tokens.shape[1]
        if columns <= width:
            return
        grown = min(max(columns, 2 * width), self.capacity)
        self.tokens = torch.cat([self.tokens, self.tokens.new_full((self.tokens.shape[0], grown - width),
                                                                   self.pad_token_id)], dim=1)

    def columns(self, rows: torch.Tensor, width: int, offset: int = 0) -> torch.Tensor:
        """Column indices ``# [b, width]``: ``lengths[rows] + offset``, ``+ 1``, ... of each row."""
        lengths = self.lengths if self._every(rows) else self.lengths[rows]
        return lengths[:, None] + torch.arange(offset, offset + width, device=rows.device)

    def _every(self, rows: torch.Tensor) -> bool:
        """Whether ``rows`` is the whole batch: rows only ever leave, in order, so as many rows as the batch are all
        of them, and a gather or scatter along columns serves (fewer operations than indexing rows)."""
        return rows.shape[0] == self.lengths.shape[0]

    def _get(self, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """``tokens[rows[r], columns[r, j]]  # [b, n]``."""
        return self.tokens.gather(1, columns) if self._every(rows) else self.tokens[rows[:, None], columns]

    def _set(self, rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor) -> None:
        """``tokens[rows[r], columns[r, j]] = values[r, j]``."""
        if self._every(rows):
            self.tokens.scatter_(1, columns, values.to(self.tokens.dtype))
        else:
            self.tokens[rows[:, None], columns] = values

    def window(self, rows: torch.Tensor, width: int) -> torch.Tensor:
        """The last ``width`` committed tokens of each row, ``# [b, width]``."""
        return self._get(rows, self.columns(rows, width, -width))

    def write(self, rows: torch.Tensor, offset: int, ids: torch.Tensor) -> None:
        """Write ``ids  # [b, n]`` at columns ``lengths + offset ...`` of each row (ids < 0 are skipped)."""
        self._reserve(offset + ids.shape[1])
        columns = self.columns(rows, ids.shape[1], offset)  # [b, n]
        self._set(rows, columns, torch.where(ids >= 0, ids, self._get(rows, columns)))

    def write_kept(self, rows: torch.Tensor, ids: torch.Tensor, counts: torch.Tensor) -> None:
        """Write the first ``counts  # [b]`` of ``ids  # [b, n]`` after each row's committed tokens, and pads over
        the rest of the ``n`` columns (tentative drafts, if any were written): :meth:`write` then :meth:`commit`'s
        clearing, in one pass."""
        self._reserve(ids.shape[1])
        columns = self.columns(rows, ids.shape[1])  # [b, n]
        keep = torch.arange(ids.shape[1], device=ids.device) < counts[:, None]
        self._set(rows, columns, torch.where(keep, ids, self.pad_token_id))

    def commit(self, rows: torch.Tensor, counts: torch.Tensor, written: int, cleared: bool = False) -> None:
        """Advance rows by ``counts  # [b]`` (each >= 1: a step emits a token per row) and clear the rest of the
        ``written`` tentative columns (unless :meth:`write_kept` has: ``cleared``)."""
        if written > 1 and not cleared:  # the first column is always kept
            columns = self.columns(rows, written - 1, 1)  # [b, written - 1]
            keep = torch.arange(1, written, device=rows.device) < counts[:, None]
            self._set(rows, columns, torch.where(keep, self._get(rows, columns), self.pad_token_id))
        if self._every(rows):
            self.lengths += counts
            self.committed = self.readout.ask(self.lengths)  # read at the step's end, before the next commit
        else:
            self.lengths[rows] += counts
            self.committed = self.readout.ask(self.lengths[rows])
        self._bound += written

    def views(self, rows: torch.Tensor, offset: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(members, input_ids)`` per group of rows with equal view length at ``offset``.

        ``members  # [m]`` index into ``rows``; ``input_ids  # [m, length]`` are those rows' views.
        """
        lengths = self.lengths[rows] + offset
        for length in torch.unique(lengths).tolist():
            members = (lengths == length).nonzero().squeeze(1)
            yield members, self.tokens[rows[members], :length]

    def output(self) -> torch.Tensor:
        """Sequences as transformers returns them: ``# [B, prompt + longest generation]``, padded."""
        return self.tokens[:, : int(self.lengths.max())].clone()


def apply_per_view(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    sequences: Sequences,
    rows: torch.Tensor,
    offset: int,
) -> torch.Tensor:
    """Call ``fn(members, input_ids)`` per group of equal-length views (see :meth:`Sequences.views`); returns the
    results stitched in the order of ``rows``, ``# [b, ...]``."""
    out = None
    for members, input_ids in sequences.views(rows, offset):
        result = fn(members, input_ids)
        out = result.new_empty((len(rows),) + result.shape[1:]) if out is None else out
        out[members] = result
    return out
