"""ByteStream: a big file's bytes, read once, handed to librsync's delta on another thread."""

from __future__ import annotations

import io
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from deltagrid.floor import rdiff
from deltagrid.uploader.delta_feed import ByteStream
from deltagrid.uploader.reader import sign


def test_a_delta_read_through_a_stream_is_the_delta_of_the_bytes() -> None:
    """Fed in uneven chunks by one thread, with little room, and read by librsync (which steps
    back over what it did not take) on another: the same delta as from the bytes in memory."""
    rng = random.Random(1)
    basis = rng.randbytes(3 << 20)
    new = bytearray(basis)
    for _ in range(30):
        at = rng.randrange(len(new) - 100)
        new[at : at + 100] = rng.randbytes(100)
    new[1_000_000:1_000_000] = b"inserted bytes shift the rest"
    sig = io.BytesIO()
    sign(io.BytesIO(basis), sig, len(basis), 2048)
    expected = io.BytesIO()
    rdiff.delta(io.BytesIO(bytes(new)), io.BytesIO(sig.getvalue()), expected)

    stream = ByteStream(limit=100_000)
    out = io.BytesIO()
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(rdiff.delta, stream, io.BytesIO(sig.getvalue()), out)
        at = 0
        while at < len(new):
            n = rng.randrange(1, 200_000)
            stream.put(bytes(new[at : at + n]))
            at += n
        stream.end()
        job.result(timeout=60)
    assert out.getvalue() == expected.getvalue()
    assert stream.tell() == len(new)


def test_a_producer_is_not_kept_waiting_by_a_reader_that_stopped() -> None:
    stream = ByteStream(limit=10)
    stream.put(b"0123456789")  # full: the next put waits for the reader
    done = threading.Event()

    def produce() -> None:
        stream.put(b"more")
        stream.put(b"and more")
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert not done.wait(0.2)
    stream.abandon()
    assert done.wait(10)


def test_a_stream_steps_back_only_within_the_chunk_being_read() -> None:
    stream = ByteStream(limit=1 << 20)
    stream.put(b"abcdef")
    stream.put(b"ghij")
    stream.end()
    assert stream.read(4) == b"abcd"
    assert stream.seek(1) == 1
    assert stream.read(10) == b"bcdef"  # one chunk at a time
    assert stream.read(2) == b"gh"
    with pytest.raises(io.UnsupportedOperation):
        stream.seek(4)  # back into a chunk already dropped
    assert stream.read() == b"ij"
    assert stream.read() == b""
