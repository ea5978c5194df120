"""ASGI middleware of the server: the request-body limit and the bound on requests in flight.

Both answer in the protocol's error shape, ``{"error": ...}`` JSON, as every error of the server does.
"""
from __future__ import annotations

import json


async def send_error(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Request bodies larger than ``max_bytes`` get 413 before any route parses them."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        chunks, size, too_big = [], 0, False
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            too_big = True
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                too_big = True
            if too_big:
                # Read and drop the rest (up to 4x the limit), so the client reads the 413 rather than a reset.
                if size > 4 * self.max_bytes + (1 << 20):
                    break
                continue
            chunks.append(body)
        if too_big:
            limit = f"{self.max_bytes / (1 << 20):g} MiB" if self.max_bytes >= (1 << 20) else f"{self.max_bytes} bytes"
            return await send_error(send, 413, f"the request body is larger than the limit of {limit}",
                                    {"Connection": "close"})
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class InFlightLimit:
    """At most ``limit`` POST requests read or computed at once; the next get 503 with Retry-After.

    This bounds the memory of waiting requests (``limit`` x the body limit) whatever the clients do;
    GETs (health, metadata) are never refused, so probes still see the server.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit, self.active, self.refused = app, limit, 0, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self.active >= self.limit:
            self.refused += 1
            return await send_error(send, 503, f"the server is busy ({self.active} requests in progress, the "
                                               "limit); retry in a second", {"Retry-After": "1"})
        self.active += 1
        try:
            return await self.app(scope, receive, send)
        finally:
            self.active -= 1
