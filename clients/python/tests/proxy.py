"""A small HTTP/1.1 proxy between the client and a creditd server, that can crash the server
at the worst moment: after the server has applied a request and answered it, before the client
hears the answer.

Armed with :meth:`CrashingProxy.crash_after`, the proxy forwards the matching request, reads the
server's answer, then drops the client's connection without it, SIGKILLs the server, starts it
again on the same data directory and forwards whatever the client sends next to the new process.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import BinaryIO, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from conftest import Server


@dataclass
class Seen:
    """A request as the proxy forwarded it."""

    method: str
    target: str
    headers: Dict[str, str]
    body: bytes


def read_message(stream: BinaryIO) -> Optional[Tuple[bytes, Dict[str, str], bytes]]:
    """One HTTP/1.1 message (request or response with a Content-Length or no body): its head
    (start line and headers, as sent), the headers by lower-case name, and its body. ``None``
    at the end of the stream."""
    lines: List[bytes] = []
    while True:
        line = stream.readline(65536)
        if not line:
            return None
        lines.append(line)
        if line in (b"\r\n", b"\n"):
            break
    headers: Dict[str, str] = {}
    for raw in lines[1:-1]:
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise AssertionError("the proxy does not handle chunked bodies")
    length = int(headers.get("content-length", "0"))
    body = stream.read(length) if length else b""
    return b"".join(lines), headers, body


class CrashingProxy:
    def __init__(self, server: Server) -> None:
        self.server = server
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._upstream_ready = threading.Event()
        self._upstream_ready.set()
        self._lock = threading.Lock()
        self._trigger: Optional[Callable[[Seen], bool]] = None
        self.seen: List[Seen] = []
        self.crashes = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def crash_after(self, trigger: Callable[[Seen], bool]) -> None:
        """Crash the server after it answers the next request ``trigger`` accepts."""
        with self._lock:
            self._trigger = trigger

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _upstream(self) -> Tuple[str, int]:
        parts = urlsplit(self.server.base_url)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        upstream_address: Optional[Tuple[str, int]] = None
        from_client = client.makefile("rb")
        try:
            while True:
                message = read_message(from_client)
                if message is None:
                    return
                head, headers, body = message
                method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
                seen = Seen(method, target, headers, body)
                with self._lock:
                    self.seen.append(seen)
                # Wait for a server that is being restarted.
                if not self._upstream_ready.wait(60):
                    return
                address = self._upstream()
                if upstream is None or upstream_address != address:
                    if upstream is not None:
                        upstream.close()
                    upstream = socket.create_connection(address, timeout=30)
                    upstream_address = address
                    from_upstream = upstream.makefile("rb")
                upstream.sendall(head + body)
                answer = read_message(from_upstream)
                if answer is None:
                    return
                with self._lock:
                    trigger = self._trigger
                    crash = trigger is not None and trigger(seen)
                    if crash:
                        self._trigger = None
                        self._upstream_ready.clear()
                if crash:
                    # The server has applied the request and answered: the client never
                    # hears of it, and the server dies without a clean stop.
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    self.server.kill()
                    self.server.start()
                    self.crashes += 1
                    self._upstream_ready.set()
                    return
                answer_head, _, answer_body = answer
                client.sendall(answer_head + answer_body)
        except OSError:
            return
        finally:
            if upstream is not None:
                upstream.close()
            try:
                client.close()
            except OSError:
                pass
