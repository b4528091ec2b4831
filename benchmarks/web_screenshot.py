"""The README's web screenshot (docs/img/web.png): the page after one search on a small LFW
gallery with the product chain, showing the URL confidence, the calibrated score and the
Face-ViT heatmap.

    python -m benchmarks.web_screenshot [--out docs/img/web.png]

Needs Debian's headless Chromium (/usr/bin/chromium); drives it through the same DevTools
helper as the web test.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

from facerank.eval.readers.lfw import load_lfw
from facerank.face.features import make_extractor
from facerank.gallery import StoredGallery

PEOPLE = ["Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
          "Ariel_Sharon", "Jean_Chretien"]
PROBE = ("Colin_Powell", 5)  # (person, index of the probe image; the gallery holds 0-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/img/web.png"))
    args = ap.parse_args()
    import uvicorn

    from facerank.web.app import create_app
    from tests.test_web import Chromium

    lfw = load_lfw()
    tmp = Path(tempfile.mkdtemp(prefix="facerank-shot-"))
    fx = make_extractor()
    files = [p for n in PEOPLE for p in sorted((lfw.root / "images" / n).glob("*.jpg"))[:4]]
    with StoredGallery.create(tmp / "gallery", fx) as g:
        g.add_files(files, [f.parent.name for f in files], progress=False)
    app = create_app(tmp / "gallery", stage2="vit+emd", calibrate="ida-r", extractor=fx)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    browser = Chromium(tmp / "profile")
    try:
        browser.page("Page.enable")
        browser.page("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        browser.page("Page.navigate", {"url": f"http://127.0.0.1:{sock.getsockname()[1]}/"})
        browser.wait_event("Page.loadEventFired")
        browser.wait_for("document.body.dataset.state === 'ready'")
        probe = sorted((lfw.root / "images" / PROBE[0]).glob("*.jpg"))[PROBE[1]]
        browser.upload("#file", probe)
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && "
                                 "document.body.dataset.state", timeout=600)
        assert state == "done", browser.js("$('error').textContent")
        browser.wait_for("[...document.images].filter(i => i.src).every(i => i.complete)")
        assert not browser.js("$('explain-vit').hidden"), "no ViT heatmap on the page"
        text = browser.js("document.body.innerText")
        assert "calibrated" in text and "URL confidence" in text, text[:500]
        args.out.write_bytes(browser.screenshot())
        print(f"wrote {args.out}")
    finally:
        browser.close()
        srv.should_exit = True


if __name__ == "__main__":
    main()
