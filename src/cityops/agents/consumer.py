"""Faust's consumer with a batch path for cityops' input topics: fetched records reach the engine per batch.

Faust hands each fetched record on alone: ``Consumer._drain_messages`` wraps every record in a
``ConsumerMessage``, awaits ``wait_first`` (two tasks per record) around the conductor's ``on_message``,
which awaits flow control, decodes into an ``Event`` and queues it for the agent's stream, whose iterator
and acks add more per record. py-spy put that at ~150 µs of CPU per record on single-event messages, three
times the engine's own ~50 µs (docs/performance.md). cityops needs none of it: the engine decodes the raw
bytes itself and commits its own offsets with its state.

``BatchConsumer`` keeps Faust's fetcher, group membership, rebalances, seeks and offset commits, and
replaces only the per-record delivery for topics a ``RecordSink`` claims: each fetched batch of one
partition goes to the sink in one call. The rules of Faust's drain loop are kept: records below the read
offset are dropped, a gap before a batch is registered for the commit, nothing is applied while the flow is
stopped or after the group generation changed (a rebalance: the records are fetched again from the
committed offsets). Records of other topics take Faust's own path.

Faust's offset commit may never run ahead of cityops' committed state: a batch is *acknowledged* to Faust
(``BatchConsumer.ack_range``) only by the release callback the sink gets, which the runtime calls after
the commit that covers the batch (``Runtime.tick``), as it did with each event's ``ack`` before.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

CHUNK = 500  # records applied per step of the event loop (each step ~50 µs per record on single events)


class RecordSink(Protocol):
    """Where ``BatchConsumer`` hands the records of the topics it ``claims``."""

    def claims(self, topic: str) -> bool:
        """True: records of ``topic`` go to ``admit``/``apply``; False: through Faust's streams."""

    async def admit(self, tp: TP) -> None:
        """Wait until records of ``tp`` may be applied (backpressure, the offset check of a new partition)."""

    def apply(self, tp: TP, records: list[Any], release: Any) -> None:
        """Apply ``records`` (aiokafka ``ConsumerRecord``s of ``tp`` in offset order: ``.offset``, ``.value``
        bytes, ``.timestamp`` in ms) synchronously; call ``release()`` once a commit covers them."""


class BatchConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer whose drain loop hands each fetched partition batch to ``record_sink``."""

    record_sink: RecordSink | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Seeks so far per partition, and where the last one went: a batch of a partition that was moved
        # while the batch was fetched or waited to be applied is not applied (it may be of the old
        # position), and the partition is moved there again so that nothing of the new position is skipped.
        self._seeks: dict[TP, int] = {}
        self._seek_to: dict[TP, int] = {}
        self._seek_lock = asyncio.Lock()

    async def seek(self, partition: TP, offset: int) -> None:
        tp = TP(partition.topic, partition.partition)
        self._seeks[tp] = self._seeks.get(tp, 0) + 1
        self._seek_to[tp] = offset
        async with self._seek_lock:
            await super().seek(partition, offset)

    async def _seek_again(self, tp: TP) -> None:
        async with self._seek_lock:  # after a seek still under way
            await super().seek(tp, self._seek_to[tp])

    def ack_range(self, tp: TP, first: int, last: int) -> int:
        """Acknowledge offsets ``first``..``last`` of ``tp`` as Faust's ``Consumer.ack`` does each message's:
        the next offset commit may cover them. Offsets below Faust's committed offset (a seek went back) and
        ones already acknowledged are left out; offsets in between that hold no record (a gap in the log)
        are acknowledged with the range. Returns how many were new."""
        if not self.app.topics.acks_enabled_for(tp.topic):
            return 0
        with ack_lock:
            committed = self._committed_offset[tp]
            if committed is not None:
                first = max(first, committed)
            if first > last:
                return 0
            index = self._acked_index[tp]
            new = set(range(first, last + 1))
            new -= index
            if new:
                index |= new
                self._acked[tp].extend(sorted(new))
                self._n_acked += len(new)
            notify(self._waiting_for_ack)
            return len(new)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs in the worker
        # Faust's loop (faust.transport.consumer.Consumer._drain_messages) with a batch per partition
        # for the sink's topics.
        sink = self.record_sink if self.record_sink is not None else getattr(self.app, "record_sink", None)
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        to_message = self._to_message
        app = self.app
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                seeks = dict(self._seeks)
                records, active = await self._wait_next_records(1.0)
                await self.sleep(0)
                if records is None or self.should_stop:
                    self.diag.unset_flag(CONSUMER_FETCHING)
                    continue
                generation = app.consumer_generation_id
                if not self.flow_active:
                    # as Faust's getmany: a rebalance started after the fetch; back to the committed offsets
                    try:
                        await self.perform_seek()
                    except Exception as exc:
                        self.log.warning(f"exception performing seek when flow not active {exc}")
                    continue
                for tp, batch in records.items():
                    if not self.flow_active or app.consumer_generation_id != generation:
                        break  # a rebalance: what was not applied is fetched again from the committed offsets
                    if not batch or not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    r_offset = read_offset[tp]
                    if r_offset is not None and batch[0].offset < r_offset:
                        batch = [rec for rec in batch if rec.offset >= r_offset]
                        if not batch:
                            continue
                    first = batch[0].offset
                    if r_offset and first - r_offset > 1 and acks_enabled_for(tp.topic):
                        await self._add_gap(tp, r_offset + 1, first)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if sink is not None and sink.claims(tp.topic):
                        # In chunks, so that a large fetch never holds the event loop (commit timer, web
                        # server) for long, and backpressure is checked as often as before.
                        lo = first  # the release of a chunk covers the offsets since the previous chunk
                        for start in range(0, len(batch), CHUNK):
                            chunk = batch[start:start + CHUNK]
                            await sink.admit(tp)
                            if not self.flow_active or app.consumer_generation_id != generation:
                                break
                            if seeks.get(tp) != self._seeks.get(tp):
                                # the partition was moved with a seek (its log went backwards) while this
                                # batch was fetched or waited: it may be of either position. Not applied;
                                # moved to the new position again, whose records are fetched from there.
                                await self._seek_again(tp)
                                break
                            last = chunk[-1].offset
                            sink.apply(tp, chunk, _Release(self, tp, lo, last))
                            read_offset[tp] = last
                            lo = last + 1
                            await asyncio.sleep(0)
                        continue
                    for rec in batch:  # Faust's own path, one record at a time
                        await self.wait_first(callback(to_message(tp, rec)), self.suspend_flow.wait())
                        read_offset[tp] = rec.offset
                self.diag.unset_flag(CONSUMER_FETCHING)
                await asyncio.sleep(0)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class _Release:
    """The ack of one applied batch: ``BatchConsumer.ack_range`` over its offsets when called."""

    __slots__ = ("consumer", "tp", "first", "last")

    def __init__(self, consumer: BatchConsumer, tp: TP, first: int, last: int) -> None:
        self.consumer, self.tp, self.first, self.last = consumer, tp, first, last

    def __call__(self) -> None:
        self.consumer.ack_range(self.tp, self.first, self.last)
