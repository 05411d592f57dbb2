"""A TCP forwarder for tests: a database behind it can be made to refuse connections."""

from __future__ import annotations

import socket
import threading
import time


class Proxy:
    """A TCP forwarder in front of the destination database. ``refuse`` cuts every open
    connection and closes the port (connection refused) until ``accept``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener: socket.socket | None = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.refusing = False
        self.stopped = False
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, name="proxy", daemon=True)
        self.thread.start()

    @staticmethod
    def _listen(port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.05)
        return listener

    def _serve(self) -> None:
        while not self.stopped:
            if self.refusing:
                if self.listener is not None:
                    self.listener.close()
                    self.listener = None
                time.sleep(0.02)
                continue
            if self.listener is None:
                self.listener = self._listen(self.port)
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            if self.refusing:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()  # the server is down: so is the destination
                continue
            for sock in (client, server):
                sock.settimeout(None)
            with self.lock:
                self.open |= {client, server}
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            self._cut(sock)

    def _cut(self, sock: socket.socket) -> None:
        with self.lock:
            self.open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def refuse(self) -> None:
        self.refusing = True
        with self.lock:
            victims = list(self.open)
        for sock in victims:
            self._cut(sock)

    def accept(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.stopped = True
        self.refuse()
        self.thread.join(timeout=5)
