"""Draft/target model pairs: the registry of known pairs (:mod:`decoding.model_pairs.registry`), loading a pair
(:mod:`decoding.model_pairs.loading`; GGUF files and packaged GGUF models: :mod:`decoding.model_pairs.gguf`), the
synthetic damped pair for benchmarks (:mod:`decoding.model_pairs.synthetic`), the distillation of a draft from a
target (:mod:`decoding.model_pairs.distill`) and the training of the embedded pair (:mod:`decoding.model_pairs.train`)."""

from .gguf import MissingPackageError, cache_dir, convert_gguf
from .loading import LoadedPair, ModelNotFoundError, load_pair
from .registry import ModelPair, UnknownPairError, embedded_path, from_name, names, pairs
from .synthetic import damped_pair

__all__ = [
    "LoadedPair",
    "ModelNotFoundError",
    "MissingPackageError",
    "ModelPair",
    "UnknownPairError",
    "cache_dir",
    "convert_gguf",
    "damped_pair",
    "embedded_path",
    "from_name",
    "load_pair",
    "names",
    "pairs",
]
