"""Test helpers shared across test modules."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from schemas import REFERENCE_EVENT

BASE_EVENT: dict[str, Any] = orjson.loads(REFERENCE_EVENT)


def event(**changes: Any) -> dict[str, Any]:
    """A deep copy of the reference event with top-level fields replaced (None deletes)."""
    ev = copy.deepcopy(BASE_EVENT)
    for key, value in changes.items():
        if value is None:
            ev.pop(key, None)
        else:
            ev[key] = value
    return ev


def raw(ev: dict[str, Any]) -> bytes:
    return orjson.dumps(ev)


class TcpProxy:
    """A loopback TCP forwarder that a test can cut (``close``) and restore (``open``).

    Cutting it refuses new connections and resets the live ones: to the client this looks
    exactly like the server going away, which is how tests take Pub/Sub "down" without
    racing the emulator's own restart.
    """

    def __init__(self, target_port: int) -> None:
        import socket

        self.target_port = target_port
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: Any = None
        self._conns: list[Any] = []
        self._lock = __import__("threading").Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open(self) -> None:
        import socket
        import threading

        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(128)
        self._listener = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: Any) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not srv:  # cut while this connection was being set up
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: Any, dst: Any) -> None:
        import socket

        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        import socket

        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            # shutdown wakes the thread blocked in accept(); close alone would not on Linux
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass
