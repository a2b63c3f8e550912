"""Starting the third-party edge nodes that `scripts/setup --test` installed."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
# pysparkplug pins paho-mqtt 1.x: its own environment, beside the gateway's.
PYSPARKPLUG_PYTHON = ROOT / ".venv" / "sparkplug-clients" / "python" / "bin" / "python"
# Eclipse Tahu's JavaScript edge node, from the npm registry.
TAHU_MODULES = ROOT / ".venv" / "sparkplug-clients" / "node"


def tahu_available() -> bool:
    """Whether Node.js and the installed sparkplug-client are here."""
    return shutil.which("node") is not None and (TAHU_MODULES / "node_modules").is_dir()


class EdgeNode:
    """A driven edge node: commands in on stdin, events out on stdout (see the drivers)."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def send(self, op: str, **args: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()

    def expect(self, event: str, timeout_s: float = 20.0) -> dict[str, Any]:
        """Wait for `event`; the events before it are kept in `seen`."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"edge node: no {event!r} within {timeout_s} s (saw {self.seen}); "
                    f"stderr: {self._stderr()}"
                )
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                continue
            self.seen.append(got["event"])
            if got["event"] == event:
                return got

    def _stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return "(running)"
        if self.process.stderr.closed:
            return "(closed)"
        return self.process.stderr.read()[-2000:]

    def kill(self) -> None:
        """kill -9: the broker publishes the node's will, its NDEATH."""
        self.process.kill()
        self._reap()

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("exit")
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()

    def _reap(self) -> None:
        self.process.wait()
        self._reader.join(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def pysparkplug_node(port: int, group: str, node: str, device: str) -> EdgeNode:
    """pysparkplug's EdgeNode with one device, connected."""
    if not PYSPARKPLUG_PYTHON.exists():
        raise AssertionError(f"{PYSPARKPLUG_PYTHON} is missing: run scripts/setup --test")
    script = HERE / "pysparkplug_node.py"
    edge = EdgeNode(
        [str(PYSPARKPLUG_PYTHON), str(script), "127.0.0.1", str(port), group, node, device]
    )
    edge.expect("connected")
    return edge


def tahu_node(port: int, group: str, node: str, device: str) -> EdgeNode:
    """Eclipse Tahu's sparkplug-client with one device, connected and born."""
    script = HERE / "tahu_node.js"
    # Node.js looks for modules beside the script; these were installed elsewhere.
    env = {**os.environ, "NODE_PATH": str(TAHU_MODULES / "node_modules")}
    edge = EdgeNode(["node", str(script), "127.0.0.1", str(port), group, node, device], env)
    edge.expect("born")
    return edge
