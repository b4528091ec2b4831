"""One exception hierarchy. Every message names the file or input and says what to do."""

from __future__ import annotations

__all__ = ["DataError", "FacerankError", "GalleryError", "ImageError", "InputError",
           "ModelFileError", "MultipleFacesError", "NoFaceError"]


class FacerankError(Exception):
    """Base class of every error facerank raises on purpose (CLI exit code 2)."""


class ImageError(FacerankError):
    """An input image cannot be read or is unsafe to decode."""


class NoFaceError(FacerankError):
    """The detector found no face in an image."""


class MultipleFacesError(FacerankError):
    """The detector found several faces and the policy is `strict`."""


class ModelFileError(FacerankError):
    """A model file (dlib `.dat`, checkpoint) is missing, truncated or not what it claims."""


class DataError(FacerankError):
    """A data set folder or protocol file is missing or malformed."""


class GalleryError(FacerankError):
    """A gallery folder is missing, corrupt, or was built with another model."""


class InputError(FacerankError):
    """Arguments that do not fit together (shapes, sizes, options)."""
