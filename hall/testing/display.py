"""Reading a node's display page as its kiosk browser does: the server-sent events of
``/events`` (node/display.py), for tests that wait for what the page shows."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["frames", "next_code"]


async def frames(response: Any) -> AsyncIterator[tuple[str, Any]]:
    """An aiohttp response of ``/events`` as (event, decoded data) pairs."""
    event = ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            yield event, json.loads(line[6:])


async def next_code(response: Any, timeout: float = 10.0) -> dict[str, Any]:
    """The next code the page shows for handsets without NFC (``code``, ``uri``, ``qr``,
    ``seconds``; node/presence.py), skipping "no code" frames."""
    async with asyncio.timeout(timeout):
        async for event, data in frames(response):
            if event == "code" and data:
                return dict(data)
    raise AssertionError("the display's event stream ended without a code")
