"""Training the embedded pair from scratch: ``python -m decoding.model_pairs.train`` (:mod:`.cli` runs the
stages; presets and shapes in :mod:`.presets`, tokenizer and token streams in :mod:`.data`, the training loop
with distillation in :mod:`.loop`, the ``eval`` stage in :mod:`.evaluate`, the model card in :mod:`.card`)."""
