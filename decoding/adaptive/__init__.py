"""How many tokens a speculative step proposes: a fixed ``g``, or ``num_draft_tokens="auto"`` (:class:`AdaptiveLength`).

The adaptive rule, training-free, decides twice per step from what the run measures on its own steps: whether the
step drafts at all (the rates of recent drafting and plain steps, expected tokens over measured seconds), then
position by position how far it drafts (while verifying more raises the expected tokens per second, the chance of
each draft read from its confidence, the seconds from a model of the target's and the draft's forwards). Probes
and refreshes keep both kinds of step measured; a strategy's calls share what they learned.

- :mod:`.step`: what the decoding loop hands the policy after each step (:class:`StepFacts`) and the stopwatch
  that times the step's phases for it;
- :mod:`.estimates`: what the policy estimates (acceptance by confidence bin, seconds, realized rates);
- :mod:`.rule`: the decisions (:class:`FixedLength`, :class:`AdaptiveLength`) and :class:`AdaptiveMemory`.

The rule, its estimates and why each is as it is: ``docs/ADAPTIVE.md``.
"""

from .rule import AdaptiveLength, AdaptiveMemory, FixedLength
from .step import StepFacts, Stopwatch

__all__ = ["AdaptiveLength", "AdaptiveMemory", "FixedLength", "StepFacts", "Stopwatch"]
