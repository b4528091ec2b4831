"""The `facerank` command line: `app.py` holds the root command and the entry point; each other
module registers one command group (gallery, search, eval, explain, train, serve, demo).

The library (`facerank.api`, `face`, `gallery`, `rerank`, `calibrate`) never imports this package.
"""
