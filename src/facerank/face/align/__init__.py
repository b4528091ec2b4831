"""Alignment: `dlib_chip` (dlib's `get_face_chip`, pixel-exact), `arcface` (the 112x112
similarity crop SFace expects) and `prealigned` (inputs that are already crops)."""
