"""Hostile uploads and load against `facerank serve` on localhost, one run.

    nice -n 10 python -m benchmarks.web_fuzz [--uploads 5000] [--load-seconds 60] \
        [--clients 20] [--stage2 emd] [--calibrate none] [--people 20] [--seed 0]

A gallery of `--people` LFW identities (2 photos each) is built with `facerank gallery`, then
`facerank serve` runs in its own process on a free localhost port. Fuzz: `--uploads` requests,
each one of: an LFW photo with bytes flipped, a truncated photo, a wrong part or request content
type, random bytes, a broken multipart form, an oversized header, a slow client (body sent in
pieces with pauses) or an aborted client (half the body, then the socket closes). Expected: no
5xx answer, and the server still answers afterwards. Load: `--clients` threads send valid LFW
probes for `--load-seconds`; every request must get 200; p50 / p95 latency and throughput.
Result: benchmarks/results/web_fuzz.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from facerank._util.paths import lfw_root

KINDS = ("flip", "truncate", "part-type", "request-type", "random", "bad-form",
         "big-header", "slow", "abort")


def build_gallery(folder: Path, people: int, probes_per_person: int = 1) -> list[Path]:
    """A gallery of `people` LFW identities with >= 3 photos (2 enrolled each) via the CLI;
    returns the probe photos (the 3rd photo of each)."""
    root = lfw_root() / "images"
    names = sorted(d for d in root.iterdir() if len(list(d.glob("*.jpg"))) >= 3)[:people]
    enrol, probes = [], []
    for d in names:
        imgs = sorted(d.glob("*.jpg"))
        enrol += imgs[:2]
        probes += imgs[2:2 + probes_per_person]
    cli = [sys.executable, "-m", "facerank.cli", "gallery"]
    subprocess.run([*cli, "create", str(folder)], check=True, capture_output=True)
    subprocess.run([*cli, "add", str(folder), *map(str, enrol)], check=True, capture_output=True)
    return probes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gallery: Path, port: int, stage2: str, calibrate: str,
                 max_upload_mb: float = 2.0, timeout: float = 180.0) -> subprocess.Popen:
    """`facerank serve` in its own process (its stderr in a temporary file); returns once
    /api/info answers 200."""
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "facerank.cli", "serve", "--gallery", str(gallery), "--port",
         str(port), "--stage2", stage2, "--calibrate", calibrate, "--max-upload-mb",
         str(max_upload_mb)], stdout=subprocess.DEVNULL, stderr=log)  # a file: a pipe fills
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"facerank serve exited: {log.read().decode()[-2000:]}")
        try:
            if request(port, "GET", "/api/info")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("facerank serve did not answer within the timeout")


def _read_status(sock: socket.socket) -> int:
    buf = b""
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("connection closed before a status line")
        buf += chunk
    return int(buf.split(b" ", 2)[1])


def _drain(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def request(port: int, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None, timeout: float = 120.0,
            pieces: int = 1, pause: float = 0.0, abort_after: int | None = None
            ) -> tuple[int | None, bytes]:
    """One raw HTTP/1.1 request (Connection: close). `pieces`/`pause`: send the body slowly;
    `abort_after`: send that many body bytes, then close the socket (status None)."""
    head = {"Host": f"127.0.0.1:{port}", "Connection": "close",
            "Content-Length": str(len(body)), **(headers or {})}
    raw = f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode("latin-1") for k, v in head.items()) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        if abort_after is not None:
            s.sendall(body[:abort_after])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return None, b""
        step = max(1, -(-len(body) // pieces))
        for i in range(0, len(body), step):
            s.sendall(body[i:i + step])
            if pause:
                time.sleep(pause)
        data = _drain(s)
    return int(data.split(b" ", 2)[1]), data


def multipart(data: bytes, ctype: str = "image/jpeg", name: str = "photo.jpg",
              field: str = "file", boundary: str = "fuzzboundary7MA4YWxk") -> tuple[bytes, str]:
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{name}\"\r\nContent-Type: {ctype}\r\n\r\n").encode() + data + \
        f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def fuzz_case(rng: np.random.Generator, photos: list[bytes], kind: str) -> dict:
    """The request arguments for one fuzzed upload of `kind`."""
    photo = photos[int(rng.integers(len(photos)))]
    data, extra, req_type = photo, {}, None
    if kind == "flip":
        b = np.frombuffer(photo, np.uint8).copy()
        idx = rng.integers(2, len(b), int(rng.integers(1, 40)))
        b[idx] ^= rng.integers(1, 256, len(idx)).astype(np.uint8)
        data = b.tobytes()
    elif kind == "truncate":
        data = photo[:int(rng.integers(0, len(photo)))]
    elif kind == "random":
        data = rng.integers(0, 256, int(rng.integers(0, 20000)), dtype=np.uint8).tobytes()
    body, ctype = multipart(data, ctype=str(rng.choice(
        ["text/plain", "application/json", "image/png", "", "x/y; charset=\x7f"]))
        if kind == "part-type" else "image/jpeg")
    if kind == "request-type":
        req_type = str(rng.choice(["application/json", "text/plain", "image/jpeg",
                                   "multipart/form-data", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary="]))
    elif kind == "bad-form":
        cut = int(rng.integers(0, len(body)))
        body = body[:cut] + rng.integers(0, 256, int(rng.integers(0, 64)),
                                         dtype=np.uint8).tobytes() + body[cut + 8:]
    elif kind == "big-header":
        extra["X-Fuzz"] = "a" * int(rng.choice([8_000, 70_000, 300_000]))
    elif kind == "slow":
        extra.update(pieces=int(rng.integers(3, 8)), pause=float(rng.uniform(0.05, 0.3)))
    elif kind == "abort":
        extra["abort_after"] = int(rng.integers(0, len(body)))
    headers = {"Content-Type": req_type or ctype}
    if "X-Fuzz" in extra:
        headers["X-Fuzz"] = extra.pop("X-Fuzz")
    return {"body": body, "headers": headers, **extra}


def run_fuzz(port: int, photos: list[bytes], n: int, seed: int = 0, workers: int = 4) -> dict:
    """`n` fuzzed uploads to /api/search; counts of answers by kind and status."""
    rng = np.random.default_rng(seed)
    cases = [(kind := str(rng.choice(KINDS)), fuzz_case(rng, photos, kind)) for _ in range(n)]
    statuses: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {k: Counter() for k in KINDS}
    lock = threading.Lock()

    def one(case: tuple[str, dict]) -> None:
        kind, kw = case
        try:
            status, _ = request(port, "POST", "/api/search?k=5", **kw)
            key = "aborted" if status is None else str(status)
        except (OSError, ValueError, IndexError) as e:
            key = f"client-error:{type(e).__name__}"
        with lock:
            statuses[key] += 1
            by_kind[kind][key] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, cases))
    five = sum(v for k, v in statuses.items() if k.startswith("5"))
    return {"uploads": n, "seconds": round(time.perf_counter() - t0, 1), "n_5xx": five,
            "statuses": dict(statuses), "by_kind": {k: dict(v) for k, v in by_kind.items()}}


def run_load(port: int, probes: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads posting valid probes for `seconds`; latency percentiles in ms."""
    lat: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        j = i
        while time.monotonic() < stop:
            body, ctype = multipart(probes[j % len(probes)])
            j += clients
            t = time.perf_counter()
            try:
                status, _ = request(port, "POST", "/api/search?k=5", body,
                                    {"Content-Type": ctype})
                key = None if status == 200 else str(status)
            except OSError as e:
                key = type(e).__name__
            dt = time.perf_counter() - t
            with lock:
                if key is None:
                    lat.append(dt)
                else:
                    errors[key] += 1

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = np.array(lat) * 1000
    return {"clients": clients, "seconds": round(wall, 1), "ok": len(lat),
            "errors": sum(errors.values()), "error_kinds": dict(errors),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p95_ms": round(float(np.percentile(ms, 95)), 1) if len(ms) else None,
            "requests_per_s": round(len(lat) / wall, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--uploads", type=int, default=5000)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--stage2", default="emd")
    ap.add_argument("--calibrate", default="none")
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=4)
    args = ap.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        probes = build_gallery(gallery, args.people)
        photos = [p.read_bytes() for p in probes]
        port = free_port()
        proc = start_server(gallery, port, args.stage2, args.calibrate)
        try:
            fuzz = run_fuzz(port, photos, args.uploads, args.seed, args.workers)
            print(json.dumps(fuzz), flush=True)
            alive_after_fuzz = request(port, "GET", "/api/info")[0] == 200
            load = run_load(port, photos, args.clients, args.load_seconds) \
                if args.load_seconds > 0 else None
            print(json.dumps(load), flush=True)
            alive = request(port, "GET", "/api/info")[0] == 200 and proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(30)
    path = write_result("web_fuzz", {
        "command": " ".join(sys.argv), "args": vars(args), "cpu_count": os.cpu_count(),
        "loadavg_start": load_start, "loadavg_end": os.getloadavg(), "fuzz": fuzz,
        "alive_after_fuzz": alive_after_fuzz,
        "load": load, "server_alive_at_end": alive})
    print(f"wrote {path}")
    if fuzz["n_5xx"] or not alive or (load and load["errors"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
