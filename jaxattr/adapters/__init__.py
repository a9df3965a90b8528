"""Adapters: Hugging Face Flax models as pure functions of token embeddings."""
from .adapter import ModelAdapter
from .build import UnknownEmbeddingPathError, make_adapter, seen_embedding_paths
from .architectures import ARCHITECTURES, Architecture, StackPaths, architecture_for
from .embeddings import EMBEDDING_PATHS, embedding_paths_for

__all__ = ["ModelAdapter", "UnknownEmbeddingPathError", "make_adapter", "seen_embedding_paths",
           "EMBEDDING_PATHS", "embedding_paths_for", "ARCHITECTURES", "Architecture",
           "StackPaths", "architecture_for"]
