"""`facerank serve`: the web page for one gallery (local by default)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from facerank.cli.options import Calibrate, CalibrateWith
from facerank.errors import InputError

err = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `serve` to the main app."""
    app.command(name="serve")(serve_command)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    gallery: Annotated[Path, typer.Option("--gallery", help="Gallery folder to search.")],
    host: Annotated[str, typer.Option(
        help="Address to bind; the default is reachable from this machine only.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    stage2: Annotated[str, typer.Option(
        help="Stage-2 re-ranker: emd, vit, vit-fast, vit+emd, none, or auto (the gallery "
        "backbone's default: gated emd on dlib, none on sface; emd falls back to none if "
        "unavailable).")]
    = "auto",
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", help="Largest probe photo accepted, in MiB.")] = 8.0,
    calibrate: Calibrate = "auto",
    calibrate_with: CalibrateWith = None,
) -> None:
    """Serve a web page to search the gallery with an uploaded photo."""
    import uvicorn

    from facerank.web.app import create_app

    if not 0 < port < 65536:
        raise InputError(f"--port {port}: must be between 1 and 65535")
    if max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb {max_upload_mb}: must be positive")
    app = create_app(gallery, stage2=stage2, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                     calibrate=calibrate, calibrate_with=calibrate_with)
    if not _is_loopback(host):
        err.print(f"warning: binding {host} makes the page reachable from other machines; "
                  "it has no login", markup=False, highlight=False)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"facerank: serving gallery {gallery} at http://{shown}:{port}/ (Ctrl-C stops)",
              markup=False, highlight=False)
    uvicorn.run(app, host=host, port=port, log_level="warning")
