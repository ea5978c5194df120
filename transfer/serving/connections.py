"""Connections to the server, bounded and timed out: what idle and slow clients cannot take.

uvicorn alone keeps a connection that never sends a request open forever, lets a client trickle
its headers or body a byte at a time, and answers every request 503 once ``limit_concurrency``
connections are open: 1,100 idle sockets took the server down. ``guarded_protocol`` wraps its
h11 protocol so that:

- a connection must deliver a complete request head within ``head_timeout`` seconds of opening
  (or of its previous response): idle and slowloris connections are closed, a partial head with
  a 408 ``{"error": ...}``;
- a request body must arrive within ``body_timeout`` seconds of its head;
- one client address holds at most ``max_per_client`` connections, all clients together
  ``max_connections``: past either, the longest-waiting connection that has no request in
  progress is closed to make room (none: the new one is closed), so a good client is served
  while others hold idle sockets;
- the h11 layer's own 400 for malformed HTTP is ``{"error": ...}`` JSON like every other error.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass
class ConnectionLimits:
    head_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 2048
    max_per_client: int = 128


@dataclass
class ConnectionGuard:
    """The open connections, by client address; counts of those closed, for tests and logs."""
    limits: ConnectionLimits
    open: dict = field(default_factory=dict)          # protocol -> client address
    by_client: dict = field(default_factory=dict)     # address -> set of protocols
    refused: int = 0
    evicted: int = 0
    timed_out: int = 0

    def admit(self, proto: "GuardedH11Protocol") -> bool:
        address = proto.client[0] if proto.client else ""
        mine = self.by_client.setdefault(address, set())
        if len(mine) >= self.limits.max_per_client and not self._evict(mine):
            self.refused += 1
            return False
        if len(self.open) >= self.limits.max_connections and not self._evict(self.open):
            self.refused += 1
            return False
        self.open[proto] = address
        mine.add(proto)
        return True

    def release(self, proto: "GuardedH11Protocol") -> None:
        address = self.open.pop(proto, None)
        if address is not None:
            mine = self.by_client.get(address)
            if mine is not None:
                mine.discard(proto)
                if not mine:
                    del self.by_client[address]

    def _evict(self, among) -> bool:
        """Close the connection of ``among`` that has waited longest for a request; False if all are busy."""
        waiting = [p for p in among if p.phase == "head"]
        if not waiting:
            return False
        victim = min(waiting, key=lambda p: p.since)
        self.evicted += 1
        victim.close_now()
        self.release(victim)
        return True


def _raw_error(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and connection bounds (see the module docstring)."""

    guard: ConnectionGuard  # set on the subclass ``guarded_protocol`` makes

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.phase, self.since, self._deadline = "head", time.monotonic(), None
        if not self.guard.admit(self):
            transport.close()
            return
        self._enter("head")

    def connection_lost(self, exc) -> None:
        self._cancel_deadline()
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def _follow(self) -> None:
        state = self.conn.their_state
        phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "busy"
        if phase != self.phase:
            self._enter(phase)

    def _enter(self, phase: str) -> None:
        self.phase, self.since = phase, time.monotonic()
        self._cancel_deadline()
        timeout = {"head": self.guard.limits.head_timeout, "body": self.guard.limits.body_timeout}.get(phase)
        if timeout and not self.transport.is_closing():
            self._deadline = self.loop.call_later(timeout, self._expire, phase)

    def _cancel_deadline(self) -> None:
        if getattr(self, "_deadline", None) is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if self.phase != phase or self.transport.is_closing():
            return
        self.guard.timed_out += 1
        if phase == "head" and self.conn.trailing_data[0]:  # part of a head arrived: say why it is closed
            self.transport.write(_raw_error(408, "Request Timeout", f"the request head did not arrive within "
                                            f"{self.guard.limits.head_timeout:g} s; send it at once"))
        if phase == "body" and self.cycle is not None:  # the app waits for the body: tell it the client is gone
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.close_now()

    def close_now(self) -> None:
        self._cancel_deadline()
        self.phase = "closed"
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_raw_error(400, "Bad Request", "the request is not valid HTTP/1.1 (or its head is "
                                        "larger than 16 KiB); send a well-formed request"))
        self.close_now()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` sharing one guard among its connections."""
    return type("GuardedH11", (GuardedH11Protocol,), {"guard": ConnectionGuard(limits)})


def raise_open_files_limit(wanted: int) -> int:
    """Raise the soft limit of open files towards ``wanted`` (within the hard limit); return the limit now."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def build_server(app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
                 access_log: bool = True, limits: ConnectionLimits | None = None):
    """A ``uvicorn.Server`` for ``app`` with guarded connections (``.run(sockets=[...])``; ``should_exit`` stops it)."""
    import uvicorn

    limits = limits or ConnectionLimits()
    files = raise_open_files_limit(limits.max_connections + 256)
    if files - 256 < limits.max_connections:  # keep room for the models' files and the listening socket
        limits.max_connections = max(16, files - 256)
    protocol = guarded_protocol(limits)
    # limit_concurrency stays off: its 503 is plain text and counts idle connections; InFlightLimit
    # bounds the work instead, the guard the connections.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log, http=protocol,
                            timeout_graceful_shutdown=5, limit_concurrency=None, timeout_keep_alive=5)
    server = uvicorn.Server(config)
    server.guard = protocol.guard
    return server
