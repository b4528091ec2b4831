"""FastAPI app: one page, a search API, gallery thumbnails by id (DESIGN.md §7).

Endpoints
    GET  /                     the page (static/index.html + app.js + app.css, no CDN)
    GET  /clusters             the clusters view (static/clusters.html); /api/clusters[/why/ID],
                               POST /api/clusters/{merge,split,not-this,rename}
    GET  /api/info             gallery size, Stage-2 method, upload limit
    POST /api/search?k=5       multipart `file` -> probe (box, 68 landmarks, detector score),
                               ranked results with per-stage scores, top-1 flow explanation
    GET  /api/image/{image_id} a gallery image as a JPEG thumbnail, looked up by its id

Safety: uploads are read from the request stream into memory with the size limit enforced
while reading (413), identified by decoding (`load_image`), never by filename or client
content type (400), and no client-supplied name ever reaches the filesystem. Every error is
JSON `{"error": "..."}` with a message that says what to do.

Modules, in the order a request flows through them: upload.py (the probe photo out of the
multipart stream, size limit) -> service.py (`SearchService`: detect/extract, gallery search,
rerank/calibrate, explanation images, JSON) -> this module (routes, security headers, errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from facerank.errors import (
    FacerankError,
    GalleryError,
    ImageError,
    InputError,
    MultipleFacesError,
    NoFaceError,
)
from facerank.face.features import FeatureExtractor
from facerank.web.service import DEFAULT_K, MAX_K, SearchService
from facerank.web.upload import DEFAULT_MAX_UPLOAD, HTTPProblem, format_bytes, read_upload

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        "form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def create_app(gallery_dir: Path, stage2: str = "auto", max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
               extractor: FeatureExtractor | None = None, calibrate: str = "auto",
               calibrate_with: Path | None = None) -> FastAPI:
    """The web app for the gallery in `gallery_dir`.

    stage2: a registered Stage-2 method, "none", or "auto" (the gallery backbone's default:
        gated emd on dlib, none on sface); "emd" falls back to none if unavailable.
    max_upload_bytes: the largest probe photo accepted (413 above it).
    extractor: reuse a loaded FeatureExtractor (must match the gallery's model); default:
    the gallery's stored settings.
    """
    if max_upload_bytes < 1:
        raise InputError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
    if not Path(gallery_dir).is_dir():
        raise GalleryError(f"{gallery_dir}: no such gallery folder; create one with "
                           f"`facerank gallery create {gallery_dir}`")
    service = SearchService(Path(gallery_dir), stage2, extractor, calibrate, calibrate_with)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.gallery.close()

    app = FastAPI(title="facerank", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.service = service
    app.state.max_upload_bytes = max_upload_bytes

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[..., Any]) -> Response:
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(HTTPProblem)
    async def problem(_: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message, **exc.extra}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = [f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg')}"
                for e in exc.errors()]
        return JSONResponse({"error": "bad request: " + "; ".join(msgs)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"nothing at {request.url.path[:200]}",
                   405: f"{request.method} is not allowed on {request.url.path[:200]}"}
        return JSONResponse({"error": message.get(exc.status_code, str(exc.detail))},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(FacerankError)
    async def facerank_error(_: Request, exc: FacerankError) -> JSONResponse:
        # what the request sent is at fault (a bad photo or field: 422; a gallery state that
        # refuses the change: 409); a server-side model or data problem stays a 500
        status = (422 if isinstance(exc, ImageError | NoFaceError | MultipleFacesError
                                    | InputError)
                  else 409 if isinstance(exc, GalleryError) else 500)
        return JSONResponse({"error": str(exc)}, status_code=status)

    def page(name: str) -> FileResponse:
        """A static HTML page, always revalidated (it changes with the package)."""
        return FileResponse(STATIC / name, media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return page("index.html")

    @app.get("/api/info")
    async def info() -> JSONResponse:
        data = await run_in_threadpool(service.info)
        return JSONResponse({**data, "max_upload_bytes": max_upload_bytes,
                             "max_upload": format_bytes(max_upload_bytes)})

    @app.post("/api/search")
    async def search(request: Request, k: int = Query(DEFAULT_K, ge=1, le=MAX_K),
                     explain: bool = True, aligned: str = "none") -> JSONResponse:
        data, name = await read_upload(request, max_upload_bytes)
        result = await run_in_threadpool(service.search, data, name, k, explain, aligned)
        return JSONResponse(result)

    @app.get("/api/image/{image_id}")
    async def image(image_id: str) -> Response:
        if not image_id.isdigit() or len(image_id) > 18:
            raise HTTPProblem(404, f"no gallery image with id {image_id[:40]!r}")
        jpeg = await run_in_threadpool(service.thumbnail, int(image_id))
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    from facerank.web.clusters import ClusterView

    view = ClusterView(service.gallery)

    async def _call(fn: Callable[..., Any], *args: Any) -> Any:  # noqa: ANN401
        try:
            return await run_in_threadpool(fn, *args)
        except InputError as e:
            raise HTTPProblem(400, str(e)) from None

    @app.get("/clusters", include_in_schema=False)
    async def clusters_page() -> FileResponse:
        return page("clusters.html")

    @app.get("/api/clusters")
    async def clusters() -> JSONResponse:
        return JSONResponse(await _call(view.clusters))

    @app.get("/api/clusters/why/{image_id}")
    async def cluster_why(image_id: int) -> JSONResponse:
        return JSONResponse(await _call(view.why, image_id))

    @app.post("/api/clusters/merge")
    async def cluster_merge(into: int, other: int) -> JSONResponse:
        await _call(view.merge, into, other)
        return JSONResponse({"ok": True})

    @app.post("/api/clusters/split")
    async def cluster_split(cluster: int, images: str) -> JSONResponse:
        try:
            ids = [int(v) for v in images.split(",") if v.strip()]
        except ValueError:
            raise HTTPProblem(400, "images: comma-separated image ids") from None
        return JSONResponse({"new": await _call(view.split, cluster, ids)})

    @app.post("/api/clusters/not-this")
    async def cluster_not_this(image: int, cluster: int) -> JSONResponse:
        await _call(view.not_this, image, cluster)
        return JSONResponse({"ok": True})

    @app.post("/api/clusters/rename")
    async def cluster_rename(cluster: int, name: str) -> JSONResponse:
        await _call(view.rename, cluster, name)
        return JSONResponse({"ok": True})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
