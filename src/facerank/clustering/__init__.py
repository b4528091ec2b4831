"""Grouping unlabelled faces into people: algorithms, metrics, incremental store, pipeline."""
