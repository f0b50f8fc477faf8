"""Training EAGLE-3 draft heads that read their target's hidden states (:mod:`.train`; the command: :mod:`.cli`,
``python -m decoding.model_pairs.heads``)."""
