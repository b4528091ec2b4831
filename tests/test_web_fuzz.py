"""A small run of benchmarks/web_fuzz.py: fuzzed uploads to a real `facerank serve` process
get no 5xx, and the server still answers afterwards (the full run is a benchmark)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import web_fuzz


@pytest.fixture(scope="module")
def served(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory):
    gallery = tmp_path_factory.mktemp("fuzz") / "gallery"
    probes = web_fuzz.build_gallery(gallery, people=3)
    port = web_fuzz.free_port()
    proc = web_fuzz.start_server(gallery, port, stage2="none", calibrate="none")
    yield port, [p.read_bytes() for p in probes], proc
    proc.terminate()
    proc.wait(30)


def test_fuzzed_uploads_get_no_5xx(served) -> None:
    port, photos, proc = served
    result = web_fuzz.run_fuzz(port, photos, n=50, seed=1, workers=4)
    assert result["n_5xx"] == 0, result
    assert sum(result["statuses"].values()) == 50
    assert any(k.startswith("4") for k in result["statuses"]), result  # hostile ones refused
    assert result["statuses"].get("200", 0) > 0, result  # and intact photos still answered
    # a client sending an oversized header may find its connection closed before it is done
    dropped = {kind: [k for k in counts if k.startswith("client-error")]
               for kind, counts in result["by_kind"].items() if kind != "big-header"}
    assert not any(dropped.values()), result["by_kind"]
    assert web_fuzz.request(port, "GET", "/api/info")[0] == 200 and proc.poll() is None


def test_shared_fuzz_files_get_4xx(served) -> None:
    port, _, _ = served
    files = sorted((Path(__file__).resolve().parents[2] / "shared" / "fuzz").glob("*.jpg"))
    if not files:
        pytest.skip("no fuzz regression files in ../shared/fuzz (kept outside the repository)")
    for f in files:
        body, ctype = web_fuzz.multipart(f.read_bytes())
        status, data = web_fuzz.request(port, "POST", "/api/search", body,
                                        {"Content-Type": ctype})
        # a byte-flipped photo may still decode to a face (200); never a server error
        assert status is not None and (status == 200 or 400 <= status < 500), (f, data[-300:])
