"""aiokafka (asyncio) against Tidewater: producer and group consumer round trip."""

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from helpers import unique
from kafka_helpers import KAFKA_WAIT, bootstrap, create_stream, kafka_broker

pytestmark = pytest.mark.tidewater_only


async def produce(servers, topic, count, idempotent):
    prod = AIOKafkaProducer(bootstrap_servers=servers, enable_idempotence=idempotent,
                            acks="all", request_timeout_ms=10000)
    await prod.start()
    try:
        sent = []
        # a batch of sends in flight together, then one awaited send
        futures = []
        for i in range(count - 1):
            futures.append(await prod.send(topic, key=f"k{i % 5}".encode(),
                                           value=f"aio-{i}".encode(),
                                           headers=[("n", str(i).encode())]))
        metas = list(await asyncio.gather(*futures))
        metas.append(await prod.send_and_wait(topic, key=b"last", value=b"aio-last",
                                              headers=[("n", b"last")]))
        for i, meta in enumerate(metas):
            sent.append((meta.partition, meta.offset, i))
        return sent
    finally:
        await prod.stop()


async def consume(servers, topic, count, group):
    cons = AIOKafkaConsumer(topic, bootstrap_servers=servers, group_id=group,
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            request_timeout_ms=15000)
    await cons.start()
    try:
        got = []
        deadline = time.monotonic() + KAFKA_WAIT
        while len(got) < count and time.monotonic() < deadline:
            batches = await cons.getmany(timeout_ms=500)
            for records in batches.values():
                got.extend(records)
        await cons.commit()
        committed = {p: await cons.committed(p) for p in cons.assignment()}
        return got, {tp.partition: off for tp, off in committed.items()}
    finally:
        await cons.stop()


@pytest.mark.parametrize("idempotent", [False, True])
def test_round_trip(make_broker, idempotent):
    broker = kafka_broker(make_broker)
    topic = unique("aio")
    create_stream(broker, topic, partitions=2)
    servers = bootstrap(broker)
    count = 50

    async def scenario():
        sent = await asyncio.wait_for(produce(servers, topic, count, idempotent), KAFKA_WAIT)
        got, committed = await asyncio.wait_for(consume(servers, topic, count, unique("ag")),
                                                KAFKA_WAIT + 10)
        return sent, got, committed

    sent, got, committed = asyncio.run(scenario())
    assert len(got) == count, f"{len(got)} of {count} records"
    for p in (0, 1):
        offs = sorted(o for part, o, _ in sent if part == p)
        assert offs == list(range(len(offs)))
        assert sorted(r.offset for r in got if r.partition == p) == offs
        if offs:
            assert committed[p] == len(offs)
    by_pos = {(r.partition, r.offset): r for r in got}
    for part, off, i in sent:
        rec = by_pos[(part, off)]
        if i == count - 1:
            assert (rec.key, rec.value, list(rec.headers)) == (b"last", b"aio-last",
                                                               [("n", b"last")])
        else:
            assert (rec.key, rec.value) == (f"k{i % 5}".encode(), f"aio-{i}".encode())
            assert list(rec.headers) == [("n", str(i).encode())]
