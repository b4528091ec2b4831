"""Training harness shared by every learned head (Face-ViT, URL, IDA-L).

One identity-disjoint split (`split.py`) and one set of cached, seeded variant features
(`data.py`), so the heads cannot drift apart. Checkpoints are read and written by
`facerank._util.checkpoint`; the commands are in `facerank.cli.train`.
"""
