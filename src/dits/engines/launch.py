"""Local OpenAI-compatible servers in subprocesses on 127.0.0.1 (`transformers serve`, vLLM), for the tests
and the engine benchmark: start one at a free port and wait until it answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A server in a subprocess (its output in ``log``); `start` waits until ``GET /health`` answers 200."""

    def __init__(self, argv: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.argv, self.port, self.log = list(argv), port, log
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 300) -> ServerProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}; log: {self.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"server did not become healthy in {timeout_s:.0f} s; log: {self.log}")

    def kill(self) -> None:
        """Stop the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def transformers_serve(model: str, log: Path, port: int | None = None) -> ServerProcess:
    """`transformers serve MODEL` on CPU (not started)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "transformers.cli.transformers", "serve", model, "--host", "127.0.0.1"]
    return ServerProcess([*argv, "--port", str(port), "--device", "cpu"], port, log)
