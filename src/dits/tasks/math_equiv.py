"""Symbolic equivalence of two math answers with ``math-verify``, under a timeout that works in any thread.

``math-verify`` enforces its own timeouts with ``signal.alarm``, which only works in the main thread. We
switch those off and run the comparison in small helper processes instead (``python math_equiv.py``,
speaking JSON lines over pipes). A comparison that exceeds its timeout gets its process killed (a thread
could not be stopped and would keep burning a core) and counts as "not equivalent"; the next call starts
a fresh helper. Helpers start lazily (about a second each, mostly importing sympy), are reused, and exit
when this process exits or closes their stdin. This file doubles as the helper's script, so its top
level imports only the standard library (``-P`` keeps the modules beside it from shadowing libraries).
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading

DEFAULT_TIMEOUT = 5.0
"""Seconds one comparison may take before it counts as "not equivalent"."""
STARTUP_TIMEOUT = 120.0
_READY = "ready"


class _Helper:
    """One helper process plus a thread that moves its output lines into a queue."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-u", "-P", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        first = self._read(STARTUP_TIMEOUT)
        if first != _READY:
            self.kill()
            raise RuntimeError(f"the math-verify helper process did not start: {first or 'no answer'}")

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # end of output: the process died or was killed

    def _read(self, timeout: float) -> str | None:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def compare(self, gold: str, prediction: str, timeout: float) -> bool | None:
        """True/False, or None when the helper timed out or died (it is then killed)."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps([gold, prediction]) + "\n")
            self.process.stdin.flush()
        except OSError:
            self.kill()
            return None
        answer = self._read(timeout)
        if answer not in ("true", "false"):
            self.kill()
            return None
        return answer == "true"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait()


class MathVerifier:
    """A small pool of helper processes; thread-safe. ``equivalent`` never hangs longer than its timeout."""

    def __init__(self, max_helpers: int | None = None) -> None:
        self.max_helpers = max_helpers or min(2, os.cpu_count() or 1)
        self._idle: list[_Helper] = []
        self._started = 0
        self._lock = threading.Condition()

    def equivalent(self, gold: str, prediction: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Whether ``prediction`` equals ``gold`` mathematically (False on timeout or parse failure)."""
        helper = self._acquire()
        result = None
        try:
            result = helper.compare(gold, prediction, timeout)
        finally:
            self._release(helper)
        return bool(result)

    def _acquire(self) -> _Helper:
        with self._lock:
            while not self._idle and self._started >= self.max_helpers:
                self._lock.wait()
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _Helper()
        except BaseException:
            self._release(None)
            raise

    def _release(self, helper: _Helper | None) -> None:
        with self._lock:
            if helper is not None and helper.alive():
                self._idle.append(helper)
            else:
                self._started -= 1
            self._lock.notify()

    def close(self) -> None:
        """Stop the idle helpers (busy ones stop when their call returns and this is called again)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._started -= len(idle)
        for helper in idle:
            helper.kill()


_VERIFIER = MathVerifier()
atexit.register(_VERIFIER.close)


def math_equivalent(gold: str, prediction: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether two LaTeX answers are mathematically equal, decided by ``math-verify`` within ``timeout``."""
    return _VERIFIER.equivalent(gold, prediction, timeout)


def _serve() -> None:
    """Helper process loop: read ``[gold, prediction]`` lines, answer ``true`` / ``false``."""
    import logging

    logging.disable(logging.WARNING)
    try:
        from math_verify import parse, verify
    except Exception as error:  # reported to the parent through the handshake line
        print(f"cannot import math_verify: {error}", flush=True)
        return
    print(_READY, flush=True)
    for line in sys.stdin:
        try:
            gold, prediction = json.loads(line)
            parsed_gold = parse(f"${gold}$", parsing_timeout=None)
            parsed_prediction = parse(f"${prediction}$", parsing_timeout=None)
            same = bool(parsed_gold and parsed_prediction) and verify(
                parsed_gold, parsed_prediction, timeout_seconds=None
            )
        except Exception:
            same = False
        print("true" if same else "false", flush=True)


if __name__ == "__main__":
    _serve()
