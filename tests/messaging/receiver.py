"""A real HTTP/1.1 receiver on 127.0.0.1 for push tests: records each request (path, headers,
JSON body) and answers from a script of (status, delay seconds), the last entry repeating."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


class Receiver:
    def __init__(self, *script: tuple[int, float]) -> None:
        self.script = list(script) or [(200, 0.0)]
        self.received: list[Received] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            path = head[0].split(" ")[1]
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in head[1:] if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status, delay = self.script[min(len(self.received), len(self.script) - 1)]
            self.received.append(Received(path, headers, json.loads(body)))
            await asyncio.sleep(delay)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass  # the pusher gave up (timeout) and reset the connection
        finally:
            self.in_flight -= 1
            writer.close()
