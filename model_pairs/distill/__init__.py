"""Distilling a draft from a large target: ``python -m decoding.model_pairs.distill`` (:mod:`.cli`: held-out
continuations, training, evaluation). Teacher outputs are cached once by :mod:`.teacher` (on-policy answers to
the prompts of :mod:`.prompts`, or corpus windows); the divergences are in :mod:`.losses`, the draft's shape,
initialisation and offline acceptance in :mod:`.draft`, its model card in :mod:`.card`."""
