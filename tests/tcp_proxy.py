"""Test helper shared by the API and worker suites (import as ``from tcp_proxy import TcpProxy``)."""

from __future__ import annotations

import contextlib
import socket
import threading


class TcpProxy:
    """A TCP proxy 127.0.0.1:<port> → target that a test can cut and restore.

    Takes "the broker" or "the API" away from a component without touching the shared
    RabbitMQ or anyone else's processes: ``cut`` drops every open connection and refuses new
    ones until ``restore``.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepting = threading.Event()
        self.accepting.set()
        self._closed = False
        #: connections forwarded since start
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self.accepting.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self, refuse: bool = True) -> None:
        """Drop every open connection; with ``refuse``, new ones are refused until ``restore``."""
        if refuse:
            self.accepting.clear()
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.accepting.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()
