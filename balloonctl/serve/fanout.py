"""``Fanout``: the service's stream readers (``GET /v1/stream``, ``/v1/events``), each with a
bounded queue. A reader that falls ``STREAM_QUEUE`` items behind loses the oldest ones
(counted in ``ServeHealth.stream_dropped``): a slow client never holds the service up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

from balloonctl.serve.parts import ServeHealth

__all__ = ["STREAM_QUEUE", "Fanout"]

STREAM_QUEUE = 256  # items a slow stream reader may fall behind before the oldest are dropped

Item = dict[str, Any]


class Fanout:
    """Hands every published item to every reader; ``end`` ends every reader's stream."""

    def __init__(self, health: ServeHealth) -> None:
        self.health = health
        self._queues: set[asyncio.Queue[Item | None]] = set()

    def publish(self, item: Item) -> None:
        for queue in list(self._queues):
            self._offer(queue, item)

    def end(self) -> None:
        for queue in list(self._queues):
            self._offer(queue, None)

    def _offer(self, queue: asyncio.Queue[Item | None], item: Item | None) -> None:
        while queue.full():
            queue.get_nowait()
            self.health.stream_dropped += 1
        queue.put_nowait(item)

    async def follow(self, first: Callable[[], Awaitable[list[Item]]],
                     wanted: Mapping[str, bool]) -> AsyncGenerator[Item, None]:
        """``first()``'s items (read once this reader is subscribed: nothing published
        meanwhile is missed), then every published item whose ``type`` is ``wanted``,
        until ``end``."""
        queue: asyncio.Queue[Item | None] = asyncio.Queue(STREAM_QUEUE)
        self._queues.add(queue)
        try:
            for item in await first():
                yield item
            while True:
                got = await queue.get()
                if got is None:
                    return
                if wanted.get(got["type"], False):
                    yield got
        finally:
            self._queues.discard(queue)
