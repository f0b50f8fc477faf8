"""Draft/target model pairs: the registry of known pairs (:mod:`decoding.model_pairs.registry`), loading a pair
(:mod:`decoding.model_pairs.loading`) and the synthetic damped pair for benchmarks
(:mod:`decoding.model_pairs.synthetic`)."""

from .loading import LoadedPair, ModelNotFoundError, load_pair
from .registry import ModelPair, UnknownPairError, embedded_path, from_name, names, pairs
from .synthetic import damped_pair

__all__ = [
    "LoadedPair",
    "ModelNotFoundError",
    "ModelPair",
    "UnknownPairError",
    "damped_pair",
    "embedded_path",
    "from_name",
    "load_pair",
    "names",
    "pairs",
]
