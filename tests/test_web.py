"""The web app: API tests with TestClient, and a real headless Chromium driving the page.

The browser test talks to Debian's Chromium over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4), so it needs no
driver package: it uploads a probe through the page's own file input (`DOM.setFileInputFiles`),
lets the page's JS post it and render the results, then reads the DOM and takes a screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import signal
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from facerank.errors import InputError
from facerank.face.features import FeatureExtractor
from facerank.gallery import StoredGallery

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2")  # starlette's note on its client
    from fastapi.testclient import TestClient

PEOPLE = ["Colin_Powell", "Tony_Blair", "Gerhard_Schroeder", "Ariel_Sharon"]
CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_extractor(backbone: Any, tmp_path_factory: pytest.TempPathFactory) -> FeatureExtractor:
    """HOG, centre face, and no fallback: a photo without a face is an error, as on the page."""
    from facerank.face.detect import FaceDetector

    return FeatureExtractor(backbone=backbone,
                            detector=FaceDetector(policy="center", fallback="none",
                                                  landmarks68=False),
                            cache=tmp_path_factory.mktemp("web-cache"))


@pytest.fixture(scope="module")
def web_gallery(lfw_root: Path, web_extractor: FeatureExtractor,
                tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """4 people x 2 enrolled LFW images; the probe of each person is a third image."""
    folder = tmp_path_factory.mktemp("web") / "gallery"
    files, probes = [], {}
    for name in PEOPLE:
        images = sorted((lfw_root / "images" / name).glob("*.jpg"))
        files += images[:2]
        probes[name] = images[2]
    with StoredGallery.create(folder, web_extractor) as g:
        report = g.add_files(files, [f.parent.name for f in files], progress=False)
    assert report.added == len(files), report.failures
    return folder, probes


@pytest.fixture(scope="module")
def client(web_gallery: tuple[Path, dict[str, Path]],
           web_extractor: FeatureExtractor) -> TestClient:
    from facerank.web.app import create_app

    return TestClient(create_app(web_gallery[0], extractor=web_extractor))


def _upload(data: bytes, name: str = "photo.jpg", ctype: str = "image/jpeg") -> dict[str, Any]:
    return {"files": {"file": (name, data, ctype)}}


def _gray_png(side: int = 120) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ---- API --------------------------------------------------------------------------------------


def test_search_finds_the_enrolled_person(client: TestClient,
                                          web_gallery: tuple[Path, dict[str, Path]]) -> None:
    _, probes = web_gallery
    for name in PEOPLE[:2]:
        resp = client.post("/api/search?k=5", **_upload(probes[name].read_bytes()))
        assert resp.status_code == 200, resp.text
        data = resp.json()
        results = data["results"]
        assert results[0]["identity"] == name
        assert data["top1_verdict_far_1e-3"] == "same person"  # a clean enrolled face
        assert len(results) == 5 and [r["rank"] for r in results] == [1, 2, 3, 4, 5]
        scores = [r["score"] for r in results]
        assert scores == sorted(scores, reverse=True)
        for r in results:  # per-stage scores; files by name only, never a server path
            assert -1 <= r["stage1"] <= 1
            # a query the (pre-)gate keeps gets no EMD at all: alpha 0 and no Stage-2 score
            assert {"stage1", "alpha"} <= set(r["stage_scores"]) <= {"stage1", "emd", "alpha"}
            assert r["stage_scores"]["alpha"] in (0.0, 0.7)  # 0: the gate kept Stage 1
            assert (r["stage2"] is None) == (r["stage_scores"]["alpha"] == 0.0)
            assert "/" not in r["file"] and r["thumbnail"] == f"/api/image/{r['image_id']}"
        probe = data["probe"]
        assert probe["width"] == probe["height"] == 250 and len(probe["box"]) == 4
        # the default pipeline runs on dlib's 5-point model only (the 68-point one is
        # non-commercial): 5 landmarks, the 68 slots empty
        assert len(probe["landmarks5"]) == 5 and all(p is not None for p in probe["landmarks5"])
        assert len(probe["landmarks68"]) == 68 and all(p is None for p in probe["landmarks68"])
        assert probe["det_score"] > 0 and probe["det_source"].startswith("hog")
        assert probe["image"].startswith("data:image/jpeg;base64,")
        assert data["stage2_name"] == "emd" and data["stage2"].startswith("Stage 2 EMD")
        assert data["explanation"].startswith("data:image/png;base64,")
        png = base64.b64decode(data["explanation"].split(",", 1)[1])
        assert Image.open(io.BytesIO(png)).size[0] > 600
    thumb = client.get(results[0]["thumbnail"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"


def test_content_is_sniffed_not_named(client: TestClient,
                                      web_gallery: tuple[Path, dict[str, Path]]) -> None:
    """A JPEG called notes.txt with a text content type is searched; the name is only shown."""
    _, probes = web_gallery
    resp = client.post("/api/search?k=1&explain=false",
                       **_upload(probes["Ariel_Sharon"].read_bytes(), "../../etc/notes.txt",
                                 "text/plain"))
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["results"][0]["identity"] == "Ariel_Sharon"
    assert data["probe"]["name"] == "notes.txt" and data["explanation"] is None


def test_non_image_is_400_with_message(client: TestClient) -> None:
    resp = client.post("/api/search", **_upload(b"just some text, not a photo", "face.jpg"))
    assert resp.status_code == 400
    assert "not an image" in resp.json()["error"] and "JPEG or PNG" in resp.json()["error"]
    truncated = _gray_png()[:60]
    resp = client.post("/api/search", **_upload(truncated, "face.png", "image/png"))
    assert resp.status_code == 400 and "face.png" in resp.json()["error"]


def test_no_face_is_422_with_message(client: TestClient) -> None:
    resp = client.post("/api/search", **_upload(_gray_png(), "wall.png", "image/png"))
    assert resp.status_code == 422
    assert resp.json()["error"].startswith("no face found in wall.png")


def test_bad_requests_are_400_json(client: TestClient,
                                   web_gallery: tuple[Path, dict[str, Path]]) -> None:
    photo = web_gallery[1]["Tony_Blair"].read_bytes()
    resp = client.post("/api/search", content=photo, headers={"content-type": "image/jpeg"})
    assert resp.status_code == 400 and "multipart/form-data" in resp.json()["error"]
    resp = client.post("/api/search", files={"photo": ("a.jpg", photo, "image/jpeg")})
    assert resp.status_code == 400 and "field named 'file'" in resp.json()["error"]
    resp = client.post("/api/search?k=0", **_upload(photo))
    assert resp.status_code == 400 and "k" in resp.json()["error"]


def test_upload_limit_is_413(web_gallery: tuple[Path, dict[str, Path]],
                             web_extractor: FeatureExtractor) -> None:
    from facerank.web.app import create_app

    small = TestClient(create_app(web_gallery[0], max_upload_bytes=10_000,
                                  extractor=web_extractor))
    assert small.get("/api/info").json()["max_upload"] == "10,000 bytes"
    photo = web_gallery[1]["Colin_Powell"].read_bytes()
    assert len(photo) < 10_000
    assert small.post("/api/search?k=1&explain=false", **_upload(photo)).status_code == 200
    for size in (30_000, 3_000_000):  # caught while streaming / by the declared length
        resp = small.post("/api/search", **_upload(photo + bytes(size)))
        assert resp.status_code == 413
        assert resp.json()["error"].startswith("upload is larger than the 10,000 bytes limit")
        assert resp.json()["limit_bytes"] == 10_000


def test_image_ids_only(client: TestClient) -> None:
    with StoredGallery.open(client.app.state.service.gallery_dir) as g:
        ids = [r["id"] for r in g.images()]
    assert client.get(f"/api/image/{ids[0]}").status_code == 200
    for bad in (str(max(ids) + 1000), "abc", "..%2F..%2Fetc%2Fpasswd", "-1"):
        resp = client.get(f"/api/image/{bad}")
        assert resp.status_code == 404
        assert resp.json()["error"]
    assert client.get("/api/image/999999").json() == {"error": "no gallery image with id 999999"}


def test_page_and_info(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/app.css"):
        text = client.get(asset).text.replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text  # no CDN, no network
    assert "http" not in page.text.replace("http-equiv", "")
    info = client.get("/api/info").json()
    assert info["images"] == 8 and info["identities"] == 4 and info["max_upload"] == "8 MiB"
    assert info["stage2"].startswith("Stage 2 EMD") and info["stage2_note"] is None


def test_stage2_choice_and_fallback(web_gallery: tuple[Path, dict[str, Path]],
                                    web_extractor: FeatureExtractor,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from facerank.web import app as web

    none = TestClient(web.create_app(web_gallery[0], stage2="none", extractor=web_extractor))
    assert none.get("/api/info").json()["stage2"] == "none"
    with pytest.raises(InputError, match="unknown Stage-2 method 'bogus'"):
        web.create_app(web_gallery[0], stage2="bogus", extractor=web_extractor)
    from facerank.web import service

    monkeypatch.setattr(service, "stage2_names", lambda: ["none"])  # "emd" not installed
    info = TestClient(web.create_app(web_gallery[0], extractor=web_extractor)).get("/api/info")
    assert info.json()["stage2"] == "none" and "not available" in info.json()["stage2_note"]


def test_serve_command(web_gallery: tuple[Path, dict[str, Path]],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from facerank.cli.serve import register
    from facerank.web import app as web

    calls: dict[str, Any] = {}
    monkeypatch.setattr(web, "create_app", lambda *a, **kw: calls.update(app=(a, kw)) or "APP")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.update(run=(app, kw)))
    cli = typer.Typer()
    register(cli)
    cli.command("noop")(lambda: None)  # two commands, so `serve` stays a sub-command
    result = CliRunner().invoke(cli, ["serve", "--gallery", str(web_gallery[0]),
                                      "--stage2", "none"])
    assert result.exit_code == 0, result.output
    assert calls["app"] == ((web_gallery[0],), {"stage2": "none", "max_upload_bytes": 8 * 2**20,
                                                "calibrate": "auto",
                                                "calibrate_with": None})
    assert calls["run"] == ("APP", {"host": "127.0.0.1", "port": 8000, "log_level": "warning"})
    result = CliRunner().invoke(cli, ["serve", "--gallery", "g", "--port", "0"])
    assert result.exit_code != 0 and "--port 0" in str(result.exception)


# ---- a real browser ---------------------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (no driver package)."""

    def __init__(self, profile: Path, width: int = 1280, height: int = 900) -> None:
        cmd_r, self._cmd_w = os.pipe()
        self._evt_r, evt_w = os.pipe()
        cmd_r, evt_w = self._lift(cmd_r), self._lift(evt_w)  # free fds 3 and 4 for the child
        args = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--no-default-browser-check", "--no-proxy-server",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--disable-default-apps",
                "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}",
                "--remote-debugging-pipe", f"--window-size={width},{height}", "about:blank"]
        devnull = os.open(os.devnull, os.O_RDWR)
        actions = [(os.POSIX_SPAWN_DUP2, cmd_r, 3), (os.POSIX_SPAWN_DUP2, evt_w, 4),
                   *((os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2))]
        try:
            self.pid = os.posix_spawn(str(CHROMIUM), args, dict(os.environ),
                                      file_actions=actions)
        finally:
            for fd in (cmd_r, evt_w, devnull):
                os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    @staticmethod
    def _lift(fd: int) -> int:
        high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return high

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from chromium in time")
            if select.select([self._evt_r], [], [], left)[0]:
                chunk = os.read(self._evt_r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe (did it crash?)")
                self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict[str, Any] | None = None, page: bool = False,
             timeout: float = 30.0) -> dict[str, Any]:
        """One DevTools command (to the page session if `page`); returns its result."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if page:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def page(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.send(method, params, page=True)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def js(self, expression: str) -> Any:
        """Evaluate in the page; returns the JSON value."""
        r = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page never satisfied: {expression}")

    def upload(self, selector: str, path: Path) -> None:
        """Choose `path` in the page's file input, as a user would (fires `change`)."""
        root = self.page("DOM.getDocument", {"depth": 0})["root"]["nodeId"]
        node = self.page("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.page("DOM.setFileInputFiles", {"files": [str(path)], "nodeId": node})

    def screenshot(self, width: int = 1280) -> bytes:
        """PNG of the whole page."""
        height = int(self.page("Page.getLayoutMetrics")["cssContentSize"]["height"])
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        return base64.b64decode(self.page("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._cmd_w)
        os.close(self._evt_r)


@pytest.fixture
def server(web_gallery: tuple[Path, dict[str, Path]],
           web_extractor: FeatureExtractor) -> Iterator[str]:
    """uvicorn on 127.0.0.1 and a free port, in a thread; yields the base URL."""
    import uvicorn

    from facerank.web.app import create_app

    app = create_app(web_gallery[0], max_upload_bytes=2**20, extractor=web_extractor)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


@pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian chromium is not installed "
                    "(/usr/bin/chromium); `make test` installs it when run as root")
def test_browser_upload_and_render(server: str, web_gallery: tuple[Path, dict[str, Path]],
                                   tmp_path: Path) -> None:
    probe = web_gallery[1]["Colin_Powell"]
    browser = Chromium(tmp_path / "profile")
    try:
        browser.page("Page.enable")
        browser.page("Network.enable")
        browser.page("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        browser.page("Page.navigate", {"url": server + "/"})
        browser.wait_event("Page.loadEventFired")
        assert browser.wait_for("document.body.dataset.state !== 'loading' && "
                                "document.body.dataset.state") == "ready"
        assert "8 images of 4 identities" in browser.js("$('gallery-info').textContent")

        # a real upload through the page's file input: its JS posts it and renders the results
        browser.upload("#file", probe)
        assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                "document.body.dataset.state") == "done", \
            browser.js("$('error').textContent")
        cards = browser.js("[...document.querySelectorAll('#results .card')]"
                           ".map(c => c.dataset.identity)")
        assert len(cards) == 5 and cards[0] == "Colin_Powell"
        assert "Colin Powell" in browser.js("document.querySelector('.card.top1').textContent")
        assert browser.js("document.querySelectorAll('#overlay circle').length") == 5
        assert browser.js("document.querySelectorAll('#overlay rect.box').length") == 1
        assert "detector score" in browser.js("$('probe-caption').textContent")
        assert "Stage 2 EMD" in browser.js("document.querySelector('.card .stage2').textContent")
        browser.wait_for("[...document.images].filter(i => i.src).every(i => i.complete)")
        assert browser.js("[...document.querySelectorAll('#results img, #explain-img, "
                          "#probe-img')].every(i => i.naturalWidth > 0)")
        assert not browser.js("$('explain').hidden")
        shot = browser.screenshot()
        (tmp_path / "web.png").write_bytes(shot)  # the README's is `benchmarks.web_screenshot`
        assert Image.open(io.BytesIO(shot)).size[0] == 1280

        # errors from the server are shown on the page
        junk = tmp_path / "holiday.jpg"
        junk.write_bytes(b"this is not a photo")
        gray = tmp_path / "wall.png"
        gray.write_bytes(_gray_png())
        big = tmp_path / "big.jpg"
        big.write_bytes(probe.read_bytes() + bytes(2**20))
        for path, message in ((junk, "holiday.jpg: not an image"),
                              (gray, "no face found in wall.png"),
                              (big, "upload is larger than the 1 MiB limit")):
            browser.js("document.body.dataset.state = 'ready'")
            browser.upload("#file", path)
            browser.wait_for("document.body.dataset.state === 'error'")
            assert browser.js("!$('error').hidden")
            assert message in browser.js("$('error').textContent")
            assert browser.js("document.querySelectorAll('#results .card').length") == 0
        # the server's own 413 reaches the page's fetch as JSON (not a dropped connection)
        status, error = browser.js(
            "(async () => { const f = new FormData();"
            " f.append('file', new Blob([new Uint8Array(2 * 1024 * 1024)]), 'x.jpg');"
            " const r = await fetch('/api/search', {method: 'POST', body: f});"
            " return [r.status, (await r.json()).error]; })()")
        assert status == 413 and "1 MiB limit" in error
        urls = {e["params"]["request"]["url"] for e in browser.events
                if e.get("method") == "Network.requestWillBeSent"}
        assert urls and all(u.startswith((server, "data:")) for u in urls), urls  # no network
    finally:
        browser.close()


def test_the_page_builds_stage2_for_the_gallerys_backbone() -> None:
    """An SFace gallery gets SFace's EMD gate and SFace's Face-ViT, not dlib's."""
    from facerank.rerank.gate import bundled_gate_path
    from facerank.rerank.vit.reranker import default_checkpoint
    from facerank.web.service import SearchService

    emd, _ = SearchService._stage2("emd", "sface")
    assert emd.backbone == "sface" and emd.gate is not None
    assert emd.gate.meta["_path"] == str(bundled_gate_path("l2", "apc", "sface"))
    vit, _ = SearchService._stage2("vit", "sface")
    assert vit.meta["backbone"].startswith("sface") and vit.gate is not None
    assert default_checkpoint("sface").name == "vit-h2l-sface.pt"
    dlib_vit, _ = SearchService._stage2("vit")
    assert dlib_vit.meta["backbone"].startswith("dlib")
