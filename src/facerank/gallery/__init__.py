"""A persistent gallery: `FeatureStore` (store.py) + a Stage-1 `VectorIndex` (index.py:
faiss by default, Milvus in milvus.py) behind one `StoredGallery` (core.py)."""

from facerank.face.imageio import IMAGE_SUFFIXES, list_images
from facerank.gallery.core import (
    DEFAULT_BATCH,
    UNLABELLED,
    UNLABELLED_NAMES,
    IdentityFrom,
    IndexKind,
    SearchResult,
    StoredGallery,
    batch_size_from_env,
    identity_of,
    is_unlabelled,
)
from facerank.gallery.store import ARRAYS, DB_NAME, FORMAT_VERSION, AddReport, FeatureStore

__all__ = ["ARRAYS", "DB_NAME", "DEFAULT_BATCH", "FORMAT_VERSION", "IMAGE_SUFFIXES",
           "UNLABELLED", "UNLABELLED_NAMES", "AddReport", "FeatureStore", "IdentityFrom",
           "IndexKind", "SearchResult", "StoredGallery", "batch_size_from_env", "identity_of",
           "is_unlabelled", "list_images"]
