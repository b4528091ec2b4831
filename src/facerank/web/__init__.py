"""The facerank web page: upload a probe photo, see the ranked gallery matches and why.

`facerank.web.app.create_app(gallery_dir)` builds the FastAPI app; `facerank serve --gallery DIR`
runs it. Nothing is imported here, so registering the CLI command keeps `facerank --help` fast.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """`facerank.web.create_app`, imported on first use."""
    if name == "create_app":
        from facerank.web.app import create_app

        return create_app
    raise AttributeError(f"module 'facerank.web' has no attribute {name!r}")
