"""A persistent gallery: `FeatureStore` (store.py) + a Stage-1 `VectorIndex` (index.py:
faiss by default, Milvus in milvus.py) behind one `Gallery` (core.py)."""

from facerank.gallery.core import (
    DEFAULT_BATCH,
    IMAGE_SUFFIXES,
    Gallery,
    IdentityFrom,
    IndexKind,
    SearchResult,
    batch_size_from_env,
    identity_of,
    list_images,
)
from facerank.gallery.store import ARRAYS, DB_NAME, FORMAT_VERSION, AddReport, FeatureStore

__all__ = ["ARRAYS", "DB_NAME", "DEFAULT_BATCH", "FORMAT_VERSION", "IMAGE_SUFFIXES",
           "AddReport", "FeatureStore", "Gallery", "IdentityFrom", "IndexKind", "SearchResult",
           "batch_size_from_env", "identity_of", "list_images"]
