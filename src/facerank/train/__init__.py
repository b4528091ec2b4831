"""Training harness shared by every learned head (Face-ViT, URL, IDA-L).

One identity-disjoint split (`split.py`), one set of cached, seeded variant features
(`data.py`) and one checkpoint format (`checkpoint.py`), so the heads cannot drift apart.
"""
