"""Kafka topic outputs (dead letters, ``cityops.alerts``): one ``cityops.types.Sink`` per topic.

Failures sorted by cause like the other sinks: a retriable broker error or an unreachable broker → the
item and every later one of the batch are kept for the next round (order kept); a record the broker will
never take (too large, invalid) → rejected with the broker's reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from cityops.types import SinkResult

__all__ = ["KafkaRecord", "KafkaTopicSink"]

log = logging.getLogger(__name__)

T = TypeVar("T")
KafkaRecord = tuple[bytes | None, bytes, list[tuple[str, bytes]]]  # key, value, headers


def _retriable(exc: BaseException) -> bool:
    from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError, asyncio.TimeoutError, OSError)):
        return True
    return bool(isinstance(exc, KafkaError) and getattr(exc, "retriable", False)) or not isinstance(exc, KafkaError)


class KafkaTopicSink(Generic[T]):
    """Writes items to ``topic`` through ``producer()`` (an started ``AIOKafkaProducer``, or None = not yet).

    ``name``: the sink's outbox cursor name; ``encode(item) -> (key, value, headers)``.
    ``write`` sends the whole batch, then waits for every acknowledgement (``acks`` as the producer has).
    """

    def __init__(self, name: str, topic: str, producer: Callable[[], Any], encode: Callable[[T], KafkaRecord]) -> None:
        self.name = name
        self.topic = topic
        self.producer = producer
        self.encode = encode

    async def write(self, batch: Sequence[tuple[Any, T]]) -> SinkResult[Any]:
        result: SinkResult[Any] = SinkResult()
        producer = self.producer()
        if producer is None:
            result.retry.extend(k for k, _ in batch)
            return result
        sent: list[tuple[Any, Any]] = []
        stop = len(batch)
        for i, (key, item) in enumerate(batch):
            k, value, headers = self.encode(item)
            try:
                sent.append((key, await producer.send(self.topic, key=k, value=value, headers=headers)))
            except Exception as exc:
                if _retriable(exc):
                    log.warning("kafka send failed topic=%s reason=%s: kept for the next round", self.topic, exc)
                    stop = i
                    break
                sent.append((key, exc))
        failed_at: int | None = None
        for i, (key, fut) in enumerate(sent):
            exc = fut if isinstance(fut, BaseException) else None
            if exc is None:
                try:
                    await fut
                except Exception as err:
                    exc = err
            if exc is None:
                if failed_at is None:
                    result.done.append(key)
                else:
                    result.retry.append(key)  # after a kept one: resent in order next round
            elif _retriable(exc):
                if failed_at is None:
                    log.warning("kafka write failed topic=%s reason=%s: kept for the next round", self.topic, exc)
                    failed_at = i
                result.retry.append(key)
            else:
                result.rejected.append((key, f"kafka refused the record on {self.topic}: "
                                             f"{type(exc).__name__}: {exc}"))
        result.retry.extend(k for k, _ in batch[stop:])
        return result
