"""A RabbitMQ node of a test's own, which it may kill and wipe (the shared one on 5672 never).

Its own node name, AMQP and distribution ports, data and log directories, cookie (HOME) and a
config with no plugins (no management listener), all under one temporary directory. Started
with Debian's ``rabbitmq-server`` as root; ``kill_and_wipe`` + ``start`` is a broker that comes
back empty, as after a lost disk or a replaced node.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pika
import pika.exceptions

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnBroker:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = f"bwtest{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "enabled_plugins").write_text("[].\n")
        (root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = false\nlog.file.level = warning\n"
        )
        (root / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")

    @property
    def mnesia(self) -> Path:
        return self.root / "mnesia"

    def _env(self) -> dict[str, str]:
        root = self.root
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")},
            "HOME": str(root),  # the Erlang cookie lives here, not in the shared node's home
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.mnesia),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(root / "pid"),
        }

    def start(self, timeout_s: float = 300) -> None:
        log = (self.root / "server.out").open("ab")
        self.proc = subprocess.Popen(
            [SERVER], env=self._env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return
            except pika.exceptions.AMQPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = (self.root / "server.out").read_text()[-2000:]
                    raise RuntimeError(f"own RabbitMQ did not start:\n{out}") from None
                time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the node (and the server script's process group)."""
        pid_file = self.root / "pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            pid_file.unlink()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None

    def kill_and_wipe(self) -> None:
        self.kill()
        shutil.rmtree(self.mnesia, ignore_errors=True)

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
