"""Readers of evaluation data sets on disk (LFW's folder and `pairs.txt`)."""
