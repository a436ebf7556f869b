"""The demo's zero-set-up MQTT broker: amqtt, in its own thread and event loop.

Only for `tapcast demo` without --broker. It speaks MQTT 3.1.1 only and carried about
1.6k QoS1 msg/s here: enough for a demo, not for production or the tests, which use
Mosquitto. Its own loop keeps broker work off the hall's loop, so a slow broker shows
as uplink backlog, not as slow taps.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedBroker:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt-broker",
                                        daemon=True)
        self._broker: Any = None  # amqtt.broker.Broker, imported lazily

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        from amqtt.broker import Broker  # lazy: only the demo needs amqtt

        # amqtt logs every connection at INFO, and 0.12.1 logs a traceback ("dictionary
        # changed size during iteration") when several clients connect at once; the
        # client simply reconnects, so on the demo's screen that is noise, not news.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._loop.set_exception_handler(
            lambda loop, context: log.debug("embedded broker: %s", context.get("message")))

        async def _start() -> None:
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                            {"allow_anonymous": True}},
            }
            broker = Broker(config)
            await broker.start()
            self._broker = broker

        self._thread.start()
        asyncio.run_coroutine_threadsafe(_start(), self._loop).result(timeout)
        log.info("embedded amqtt broker on %s", self.url)

    def stop(self, timeout: float = 10.0) -> None:
        if self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout)
            except Exception as exc:  # shutting down: report, do not mask the caller's exit
                log.warning("embedded broker did not shut down cleanly: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
