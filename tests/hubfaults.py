"""Faults the local Hub test server injects into ``resolve`` answers (downloads and range reads)."""

from __future__ import annotations

import io
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

FAULT_KINDS = ("status", "reset", "truncate", "short", "long_length", "slow", "corrupt")


@dataclass
class Fault:
    """A failure the server injects into the next `times` matching ``resolve`` answers.

    status: answer `status` (with `retry_after` as Retry-After); reset: half the body, then a TCP
    reset; truncate: half the body, then a clean close; short: a consistent but short body
    (Content-Length says half); long_length: Content-Length 64 bytes more than the body, then close;
    slow: wait `delay` seconds, then answer normally; corrupt: one byte of the body flipped.
    """

    kind: str
    pattern: str = "*.safetensors"
    times: int = 1
    status: int = 503
    retry_after: str | None = None
    delay: float = 0.2
    methods: tuple[str, ...] = ("GET",)


def answer_with_fault(handler: Any, fault: Fault, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
    """Answer with `fault` injected (see :class:`Fault`)."""
    if fault.kind == "status":
        extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        handler._send(fault.status, {"error": f"injected {fault.status}"}, headers=extra)
        return
    if fault.kind == "slow":
        time.sleep(fault.delay)
    if fault.kind in ("slow", "corrupt") or head:
        if fault.kind == "corrupt" and body:
            body = body[: len(body) // 2] + bytes([body[len(body) // 2] ^ 0xFF]) + body[len(body) // 2 + 1:]
        handler._send(status, raw=body, headers=headers, head=head, count=True)
        return
    half = body[: len(body) // 2]
    length = {"short": len(half), "long_length": len(body) + 64}.get(fault.kind, len(body))
    sent = half if fault.kind in ("reset", "truncate", "short") else body
    handler.send_response(status)
    for key, value in headers.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(length))
    handler.end_headers()
    handler.wfile.write(sent)
    handler.wfile.flush()
    with handler.state.lock:
        handler.state.log.append((handler.command, handler.path, len(sent)))
        handler.state.bytes_sent += len(sent)
    if fault.kind != "short":
        if fault.kind == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            handler.connection.shutdown(socket.SHUT_RDWR)
        handler.connection.close()
        handler.wfile = io.BytesIO()  # the handler's final flush must not touch the closed socket
        handler.close_connection = True
