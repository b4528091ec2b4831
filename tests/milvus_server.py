"""A real standalone Milvus server (`milvus-server` from the `milvus` wheel, embedded etcd) on
free localhost ports with its own data folder, for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PORT_OPTIONS = ("--etcd-port", "--root-coord-port", "--proxy-port", "--proxy-internal-port",
                "--query-coord-port", "--query-node-port", "--index-coord-port",
                "--index-node-port", "--data-coord-port", "--data-node-port")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class MilvusServer:
    """`milvus-server --data DIR` with every port chosen free; start/kill/restart keep the same
    data folder and ports, so a restart finds the collections it had."""

    def __init__(self, data: Path, binary: str | None = None) -> None:
        beside = Path(sys.executable).parent / "milvus-server"  # the venv's, when not on PATH
        self.binary = binary or shutil.which("milvus-server") or (
            str(beside) if beside.is_file() else None)
        if self.binary is None:
            raise RuntimeError("milvus-server not found (pip install milvus==2.3.5)")
        self.data = data
        self.ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['--proxy-port']}"

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait until the proxy answers a list_collections call."""
        from pymilvus import MilvusClient

        self._wait_ports_free(timeout)  # a killed server's sockets can linger a moment
        args = [self.binary, "--data", str(self.data)]
        for opt, port in self.ports.items():
            args += [opt, str(port)]
        log = open(self.data.parent / f"{self.data.name}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"milvus-server exited with {self.proc.returncode} "
                                   f"(log: {log.name})")
            try:
                MilvusClient(uri=self.uri, timeout=2).list_collections()
                return
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"milvus-server not ready in {timeout:.0f} s "
                                       f"(log: {log.name})") from None
                time.sleep(0.5)

    def _wait_ports_free(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for port in self.ports.values():
            while True:
                with socket.socket() as s:
                    try:
                        s.bind(("127.0.0.1", port))
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"port {port} still busy after {timeout:.0f} s"
                                               ) from None
                time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and its child process (its own process group)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.proc = None
