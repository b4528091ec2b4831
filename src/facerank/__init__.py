"""facerank: face identification beyond one cosine score.

Stage 1 ranks a gallery by cosine of global embeddings; Stage 2 re-ranks the top-k
(DeepFace-EMD); calibration and uncertainty plug in after it.

One-line API (loaded on first use, so `import facerank` stays light):
`facerank.embed(x)`, `facerank.compare(a, b)`, `facerank.cluster(paths)`,
`facerank.Gallery.open(folder).search(x, k)`.
"""

__version__ = "0.1.0"

_API = ("embed", "compare", "cluster", "Gallery", "Comparison")
__all__ = ["__version__", *_API]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 lazy attributes
    if name in _API:
        from facerank import api

        return getattr(api, name)
    raise AttributeError(f"module 'facerank' has no attribute {name!r}")
