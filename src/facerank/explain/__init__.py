"""Explanations: flow pictures of Stage-2 matches."""
