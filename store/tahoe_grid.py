"""A local Tahoe-LAFS grid on loopback: one introducer, N storage servers and one client node.

For trying deltagrid on a grid and for the tests. Nodes are created with `tahoe create-introducer`,
`create-node` and `create-client` (shares needed/happy/total default 2/3/4) and run with
`tahoe run`, each in its own session so it can be stopped alone. DIR/grid.json records each node's
pid and the client's web port. A grid for `deltagrid grid` outlives the command
(`--allow-stdin-close`); a `tied` one (the tests') has its nodes read a pipe from this process, so
they exit with it however it ends: a test run stopped by SIGTERM or SIGKILL leaves no nodes
holding ports and directories.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from deltagrid.floor.errors import DeltagridError, UsageError


def tahoe_executable() -> str:
    """`tahoe` beside this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "tahoe"
    found = str(beside) if beside.exists() else shutil.which("tahoe")
    if not found:
        raise UsageError("the 'tahoe' executable is not installed (pip install tahoe-lafs)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _endpoint(port: int) -> list[str]:
    return [f"--port=tcp:{port}:interface=127.0.0.1", f"--location=tcp:127.0.0.1:{port}"]


def _tahoe(*args: str) -> None:
    done = subprocess.run(
        [tahoe_executable(), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode:
        raise DeltagridError(
            f"tahoe {args[0]} failed: {done.stderr.strip() or done.stdout.strip()}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(what: str, ready: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise DeltagridError(f"local grid: timed out waiting for {what}")
        time.sleep(0.25)


def _force_foolscap(node: Path) -> None:
    """Storage over Foolscap only. Over Tahoe's HTTP storage protocol a share upload cut off by
    a dead client keeps its slot for 30 minutes (the server's BucketWriter timeout), so the same
    bytes cannot be put again until then; over Foolscap the server aborts it on disconnect. The
    local grid is where killed clients are tested, so it takes the second."""
    cfg = configparser.RawConfigParser()
    path = node / "tahoe.cfg"
    cfg.read(path)
    for section in ("client", "storage"):
        if not cfg.has_section(section):
            cfg.add_section(section)
        cfg.set(section, "force_foolscap", "true")
    with open(path, "w") as f:
        cfg.write(f)


class LocalGrid:
    def __init__(self, base: Path, tied: bool = False) -> None:
        self.base = base.absolute()
        self.state = self.base / "grid.json"
        self.tied = tied
        self.procs: dict[str, subprocess.Popen[bytes]] = {}  # a tied grid's: they hold the pipes

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state.read_text()))
        except (OSError, ValueError):
            raise DeltagridError(f"no local grid in {self.base}") from None

    def _save(self, doc: dict[str, Any]) -> None:
        self.state.write_text(json.dumps(doc, indent=1))

    @property
    def url(self) -> str:
        return f"tahoe://127.0.0.1:{self._load()['webport']}"

    def create(self, servers: int = 4, needed: int = 2, happy: int = 3, total: int = 4) -> None:
        if self.state.exists():
            raise DeltagridError(f"{self.base} already holds a local grid")
        if not 1 <= needed <= happy <= total or happy > servers:
            raise UsageError("shares must satisfy 1 <= needed <= happy <= total, happy <= servers")
        self.base.mkdir(parents=True, exist_ok=True)
        shares = [f"--shares-needed={needed}", f"--shares-happy={happy}", f"--shares-total={total}"]
        _tahoe("create-introducer", *_endpoint(free_port()), str(self.base / "introducer"))
        nodes = ["introducer"]
        self._save({"webport": None, "servers": servers, "nodes": nodes, "pids": {}})
        self.start_node("introducer")
        furl_file = self.base / "introducer" / "private" / "introducer.furl"
        _wait("the introducer", furl_file.exists, 60)
        furl = furl_file.read_text().strip()
        for i in range(servers):
            name = f"storage{i}"
            _tahoe(
                "create-node",
                f"--nickname={name}",
                f"--introducer={furl}",
                "--webport=none",
                *_endpoint(free_port()),
                *shares,
                str(self.base / name),
            )
            nodes.append(name)
        webport = free_port()
        _tahoe(
            "create-client",
            "--nickname=client",
            f"--introducer={furl}",
            f"--webport=tcp:{webport}:interface=127.0.0.1",
            *shares,
            str(self.base / "client"),
        )
        nodes.append("client")
        for name in nodes[1:]:
            _force_foolscap(self.base / name)
        doc = self._load()
        doc.update(webport=webport, nodes=nodes)
        self._save(doc)

    def start(self, timeout: float = 120) -> None:
        """Run every node that is not running, then wait for the client to see all servers."""
        for name in self._load()["nodes"]:
            self.start_node(name)
        self.wait_connected(self._load()["servers"], timeout)

    def start_node(self, name: str) -> None:
        doc = self._load()
        pid = doc["pids"].get(name)
        if pid and _alive(pid):
            return
        log = open(self.base / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        run = [tahoe_executable(), "run", str(self.base / name)]
        if not self.tied:
            run.insert(2, "--allow-stdin-close")
        with log:
            proc = subprocess.Popen(
                run,
                stdin=subprocess.PIPE if self.tied else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self.tied:
            self.procs[name] = proc
        doc["pids"][name] = proc.pid
        self._save(doc)

    def stop_node(self, name: str, timeout: float = 30) -> None:
        doc = self._load()
        pid = doc["pids"].pop(name, None)
        self._save(doc)
        proc = self.procs.pop(name, None)
        if proc is not None and proc.stdin is not None:
            proc.stdin.close()  # the pipe's end: a tied node exits by itself
        if not pid:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        return
                except ChildProcessError:  # not our child: poll instead
                    if not _alive(pid):
                        return
                time.sleep(0.1)

    def stop(self) -> None:
        for name in reversed(self._load()["nodes"]):
            self.stop_node(name)

    def connected(self) -> int:
        """How many storage servers the client node is connected to now."""
        try:
            response = requests.get(
                f"http://127.0.0.1:{self._load()['webport']}/?t=json", timeout=5
            )
            servers = response.json().get("servers", [])
        except (requests.RequestException, ValueError):
            return 0
        return sum(
            1
            for s in servers
            if str(s.get("connection_status", "")).lower().startswith("connected")
        )

    def wait_connected(self, servers: int, timeout: float = 120) -> None:
        _wait(f"{servers} storage servers to connect", lambda: self.connected() >= servers, timeout)
