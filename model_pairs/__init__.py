"""Draft/target model pairs: the synthetic damped pair for benchmarks (:mod:`decoding.model_pairs.synthetic`)."""

from .synthetic import damped_pair

__all__ = ["damped_pair"]
