"""The first step of a web search: the probe photo out of a multipart request, in memory.

Why a module of its own: the upload is the app's only untrusted input, so its safety rules sit
in one place, apart from the search. The body is parsed while it streams in and the size
limit is enforced during the read (413, before the whole body is held); the client's filename
is reduced to a display label and never reaches the filesystem. Data flows one way:
upload (here) -> `service.SearchService.search` -> JSON answered by `app.create_app`.
`HTTPProblem` is the one error type of the web layer: raised here and by the service,
answered as JSON `{"error": ...}` by the app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD = 8 * MiB
FORM_OVERHEAD = 64 * 1024  # multipart headers and boundaries allowed on top of the photo


class HTTPProblem(Exception):
    """An error answered as JSON `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def format_bytes(n: int) -> str:
    """8388608 -> "8 MiB", 10240 -> "10 KiB", 10000 -> "10,000 bytes"."""
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n:,} bytes"


def too_large(limit: int) -> HTTPProblem:
    """The 413 answer for uploads over `limit` bytes."""
    return HTTPProblem(413, f"upload is larger than the {format_bytes(limit)} limit; send a "
                       "smaller photo (JPEG or PNG)", limit_bytes=limit)


def _display_name(raw: bytes | None) -> str:
    """A client filename reduced to a short printable label (display only, never a path)."""
    if not raw:
        return "uploaded photo"
    name = raw.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable())[:80].strip()
    return name or "uploaded photo"


async def read_upload(request: Request, limit: int, field: str = "file") -> tuple[bytes, str]:
    """The bytes and display name of the multipart `field` of `request`, read in memory.

    The body is parsed as it streams in; more than `limit` bytes in the file part (or a body
    over `limit` + a small allowance for the form around it) stops the read with a 413.
    """
    mime, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if mime != b"multipart/form-data" or not boundary:
        raise HTTPProblem(400, f"send the photo as multipart/form-data in a field named "
                          f"{field!r} (got content type {mime.decode('latin-1') or 'none'})")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(limit)

    parts: list[dict[str, Any]] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"] += data[start:end]

    callbacks: dict[str, Callable[..., None]] = {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit + FORM_OVERHEAD:
                raise too_large(limit)
            parser.write(chunk)
            if parts and len(parts[-1]["data"]) > limit:
                raise too_large(limit)
        parser.finalize()
    except HTTPProblem:
        raise
    except Exception as e:  # python-multipart raises several error types on malformed forms
        raise HTTPProblem(400, f"malformed multipart form ({e}); send the photo as "
                          f"multipart/form-data in a field named {field!r}") from None
    for part in parts:
        _, disp = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if disp.get(b"name") == field.encode():
            return bytes(part["data"]), _display_name(disp.get(b"filename"))
    raise HTTPProblem(400, f"no file in the upload: send the photo in a form field named "
                      f"{field!r}")
