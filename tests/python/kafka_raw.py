"""A minimal raw Kafka protocol client for the black-box tests: the exact error codes and
messages a client library would hide or turn into local errors, and hand-made record batches
(a bad CRC included). Only non-flexible request versions, one request at a time."""

import socket
import struct
import time

# ---------------------------------------------------------------------------------------------
# record batches


def _crc32c_table():
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)  # zigzag
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _vbytes(data) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def record_batch(values, keys=None, timestamp_ms=None, corrupt=False, producer=(-1, -1, -1),
                 record_count=None, last_offset_delta=None) -> bytes:
    """An uncompressed RecordBatch v2 with base offset 0; `producer` is (producer id, epoch,
    base sequence) for an idempotent producer; `corrupt` flips a byte of the last record after
    the CRC was computed; `record_count` and `last_offset_delta` override the header's (with a
    valid CRC: a batch that lies about its records)."""
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    keys = keys or [None] * len(values)
    records = b""
    for delta, (key, value) in enumerate(zip(keys, values)):
        body = (b"\x00" + _varint(0) + _varint(delta) + _vbytes(key) + _vbytes(value)
                + _varint(0))
        records += _varint(len(body)) + body
    pid, epoch, sequence = producer
    count = len(values) if record_count is None else record_count
    last = len(values) - 1 if last_offset_delta is None else last_offset_delta
    after_crc = struct.pack(">hiqqqhii", 0, last, ts, ts, pid, epoch, sequence, count) + records
    crc = crc32c(after_crc)
    if corrupt:
        after_crc = after_crc[:-2] + bytes([after_crc[-2] ^ 0xFF]) + after_crc[-1:]
    rest = struct.pack(">ibI", -1, 2, crc) + after_crc
    return struct.pack(">qi", 0, len(rest)) + rest


class Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, fmt):
        value = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value[0] if len(value) == 1 else value

    def string(self):
        size = self.take(">h")
        if size < 0:
            return None
        self.pos += size
        return self.data[self.pos - size:self.pos].decode()

    def bytes_(self):
        size = self.take(">i")
        if size < 0:
            return None
        self.pos += size
        return self.data[self.pos - size:self.pos]


def _str(value) -> bytes:
    if value is None:
        return struct.pack(">h", -1)
    data = value.encode()
    return struct.pack(">h", len(data)) + data


class RawKafka:
    """One connection speaking non-flexible request versions by hand."""

    def __init__(self, broker, timeout=10.0):
        self.sock = socket.create_connection((broker.host, broker.kafka_port), timeout=timeout)
        self.correlation = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _recv(self, size):
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise AssertionError("the broker closed the connection")
            data += chunk
        return data

    def request(self, api_key, version, body: bytes, expect_response=True, flexible=False) -> Reader:
        """Sends one request; `flexible`: header v2 and response header v1, each with an empty
        tagged-field section (the body is the caller's to encode)."""
        self.correlation += 1
        header = struct.pack(">hhi", api_key, version, self.correlation) + _str("raw-test")
        if flexible:
            header += b"\x00"
        self.sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        if not expect_response:
            return None
        size = struct.unpack(">i", self._recv(4))[0]
        reader = Reader(self._recv(size))
        assert reader.take(">i") == self.correlation, "response out of order"
        if flexible:
            assert reader.take(">B") == 0, "tagged fields in the response header"
        return reader

    def sasl_plain(self, user, password) -> int:
        """SaslHandshake v1 for PLAIN, then SaslAuthenticate v1: the authentication's error code."""
        r = self.request(17, 1, _str("PLAIN"))
        assert r.take(">h") == 0, "PLAIN not offered"
        token = b"\x00" + user.encode() + b"\x00" + password.encode()
        r = self.request(36, 1, struct.pack(">i", len(token)) + token)
        return r.take(">h")

    def api_versions(self) -> dict:
        """{api_key: (min, max)} from ApiVersions v0."""
        r = self.request(18, 0, b"")
        assert r.take(">h") == 0
        return {key: (lo, hi) for key, lo, hi in (r.take(">hhh") for _ in range(r.take(">i")))}

    def init_producer_id(self):
        """InitProducerId v0 (no transactions): (error_code, producer_id, epoch)."""
        r = self.request(22, 0, _str(None) + struct.pack(">i", 60000))
        r.take(">i")  # throttle
        return r.take(">hqh")

    def produce(self, topic, partition, batch: bytes, acks=-1, timeout_ms=10000):
        """Produce v8: (error_code, base_offset, error_message), or None with acks=0."""
        body = (_str(None) + struct.pack(">hii", acks, timeout_ms, 1) + _str(topic)
                + struct.pack(">iii", 1, partition, len(batch)) + batch)
        r = self.request(0, 8, body, expect_response=acks != 0)
        if r is None:
            return None
        assert r.take(">i") == 1 and r.string() == topic and r.take(">i") == 1
        _, error, base, _, _ = r.take(">ihqqq")
        for _ in range(r.take(">i")):  # record_errors
            r.take(">i")
            r.string()
        return error, base, r.string()

    def list_offsets(self, topic, partition, timestamp=-1):
        """ListOffsets v1: (error_code, offset); timestamp -1 latest, -2 earliest."""
        body = struct.pack(">ii", -1, 1) + _str(topic) + struct.pack(">iiq", 1, partition,
                                                                     timestamp)
        r = self.request(2, 1, body)
        assert r.take(">i") == 1 and r.string() == topic and r.take(">i") == 1
        _, error, _, offset = r.take(">ihqq")
        return error, offset

    def fetch(self, topic, partition, offset, max_wait_ms=100, max_bytes=1 << 20):
        """Fetch v4 asking `max_bytes` in all and for the partition: (error_code,
        high_watermark, record bytes)."""
        body = (struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0) + struct.pack(">i", 1)
                + _str(topic) + struct.pack(">iiqi", 1, partition, offset, max_bytes))
        r = self.request(1, 4, body)
        r.take(">i")  # throttle
        assert r.take(">i") == 1 and r.string() == topic and r.take(">i") == 1
        _, error, high, _ = r.take(">ihqq")
        aborted = r.take(">i")
        for _ in range(max(aborted, 0)):
            r.take(">qq")
        return error, high, r.bytes_()

    def offset_for_leader_epoch(self, topic, partition, leader_epoch, current_leader_epoch=-1):
        """OffsetForLeaderEpoch v3: (error_code, leader_epoch, end_offset)."""
        body = (struct.pack(">ii", -1, 1) + _str(topic)
                + struct.pack(">iiii", 1, partition, current_leader_epoch, leader_epoch))
        r = self.request(23, 3, body)
        r.take(">i")  # throttle
        assert r.take(">i") == 1 and r.string() == topic and r.take(">i") == 1
        error, _, epoch, end_offset = r.take(">hiiq")
        return error, epoch, end_offset
