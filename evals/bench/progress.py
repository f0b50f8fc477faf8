"""``decoding-bench``'s progress on stderr: rich's bar when stderr is a terminal (tqdm's without rich), else
plain lines."""

from __future__ import annotations

import sys

__all__ = ["Progress", "work_units"]


class Progress:
    """A progress bar on stderr: rich's when stderr is a terminal (tqdm's without rich), else plain lines."""

    def __init__(self, total: int, enabled: bool = True):
        self.enabled, self.total, self.done = enabled, total, 0
        self._rich = self._tqdm = None
        if not enabled or not sys.stderr.isatty():
            return
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self._task = self._rich.add_task("starting", total=total)
            self._rich.start()
        except ImportError:
            try:
                from tqdm import tqdm

                self._tqdm = tqdm(total=total, file=sys.stderr, leave=False, dynamic_ncols=True)
            except ImportError:
                pass

    def describe(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.update(self._task, description=text)
        elif self._tqdm is not None:
            self._tqdm.set_description_str(text)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.advance(self._task, n)
        elif self._tqdm is not None:
            self._tqdm.update(n)

    def log(self, text: str) -> None:
        """A line that stays (plain mode only: the bar shows the same information live)."""
        if self.enabled and self._rich is None and self._tqdm is None:
            print(f"[{self.done}/{self.total}] {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self._tqdm is not None:
            self._tqdm.close()


def work_units(num_prompts: int, batch_sizes, draft_lengths, modes, rounds: int, assisted: bool = True,
               variants=(), step_split: bool = False) -> int:
    """Number of generate calls (warm-up included), step splits (one per method and block, with ``step_split``)
    and cost measurements a run makes, for the progress bar."""
    from decoding.evals.bench.variants import method_count

    total = 0
    for batch_size in batch_sizes:
        batches = -(-num_prompts // batch_size)
        methods = 2 + len(draft_lengths) * (2 if assisted and batch_size == 1 else 1)  # target, prefill
        methods += method_count(variants, batch_size, len(draft_lengths))
        total += len(modes) * methods * (1 + rounds * batches + int(step_split)) + 1  # + 1: the cost measurement
    return total
