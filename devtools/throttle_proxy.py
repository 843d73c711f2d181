"""A slow link without root: a TCP proxy on localhost that forwards to a server at a bounded rate
in each direction and counts the bytes that cross it (the sync tests and bench/sync_load.py)."""

from __future__ import annotations

import socket
import threading
import time


class ThrottleProxy:
    """Listens on 127.0.0.1:``port`` and forwards each connection to ``target`` (host, port),
    at most ``rate_bps`` bytes per second per direction (None: unthrottled). ``sent`` counts
    client-to-server bytes, ``received`` server-to-client. Use as a context manager."""

    def __init__(self, target: tuple[str, int], rate_bps: float | None = None):
        self.target, self.rate_bps = target, rate_bps
        self.sent = self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self._closing = False

    def __enter__(self) -> ThrottleProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc_info) -> None:
        self._closing = True
        self._listener.close()
        for s in list(self._open):
            _close(s)
        for t in self._threads:
            t.join(timeout=5)

    def reset_counts(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)   # the server is down: the client sees the connection closed
                continue
            self._open += [client, server]
            self._spawn(self._pump, client, server, "sent")
            self._spawn(self._pump, server, client, "received")

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str) -> None:
        try:
            while chunk := src.recv(4096):
                dst.sendall(chunk)
                with self._lock:
                    setattr(self, counter, getattr(self, counter) + len(chunk))
                if self.rate_bps:
                    time.sleep(len(chunk) / self.rate_bps)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
