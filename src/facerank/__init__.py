"""facerank: face identification beyond one cosine score.

Stage 1 ranks a gallery by cosine of global embeddings; Stage 2 re-ranks the top-k
(DeepFace-EMD); calibration and uncertainty plug in after it.
"""

__version__ = "0.1.0"
