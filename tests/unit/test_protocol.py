"""The agent channel's framing: length-prefixed UTF-8 JSON frames with a size limit."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from wflo_jupyter.sandbox.agent import protocol
from wflo_jupyter.sandbox.agent.protocol import (
    ChannelClosed,
    FrameDecoder,
    ProtocolError,
    b64decode,
    b64encode,
    encode_frame,
    recv_frame,
)


def test_round_trip_through_decoder() -> None:
    frame = {"type": "stream", "id": "c1", "name": "stdout", "text": "héllo ✓\n"}
    data = encode_frame(frame)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert json.loads(data[4:].decode()) == frame
    assert FrameDecoder().feed(data) == [frame]


def test_decoder_reassembles_byte_by_byte_and_batches() -> None:
    frames = [{"type": "pong", "id": str(i)} for i in range(3)]
    wire = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    seen = []
    for i in range(len(wire)):
        seen += decoder.feed(wire[i : i + 1])
    assert seen == frames
    assert decoder.pending == 0
    assert FrameDecoder().feed(wire) == frames


def test_binary_fields_are_base64() -> None:
    blob = bytes(range(256))
    frame = {"type": "result", "data": b64encode(blob)}
    (decoded,) = FrameDecoder().feed(encode_frame(frame))
    assert b64decode(decoded["data"]) == blob
    with pytest.raises(ProtocolError, match="invalid base64"):
        b64decode("not base64!")


def test_oversize_frame_is_rejected_on_both_ends() -> None:
    big = {"type": "stream", "text": "x" * 2000}
    with pytest.raises(ProtocolError, match="over the 1000-byte limit"):
        encode_frame(big, max_bytes=1000)
    # A header announcing too much is refused before the body is buffered.
    with pytest.raises(ProtocolError, match="over the 1000-byte limit"):
        FrameDecoder(max_bytes=1000).feed((10**9).to_bytes(4, "big"))
    assert protocol.MAX_FRAME_BYTES >= 64 * 1024 * 1024


def test_truncated_frame_is_an_error_at_close() -> None:
    data = encode_frame({"type": "ping", "id": "1"})
    decoder = FrameDecoder()
    assert decoder.feed(data[:-3]) == []
    with pytest.raises(ProtocolError, match="closed inside a frame"):
        decoder.close()
    FrameDecoder().close()  # nothing pending: a clean end


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"id": 1}', "no string 'type'"),
    ],
)
def test_invalid_bodies(body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(len(body).to_bytes(4, "big") + body)


def test_unserialisable_frame() -> None:
    with pytest.raises(ProtocolError, match="not JSON-serialisable"):
        encode_frame({"type": "x", "value": object()})
    with pytest.raises(ProtocolError, match="string 'type'"):
        encode_frame({"id": 1})


def test_recv_frame_over_a_socket_pair() -> None:
    left, right = socket.socketpair()
    with left, right:
        frames = [{"type": "exec", "id": str(i), "code": "x" * 100_000} for i in range(3)]

        def send() -> None:
            for f in frames:
                left.sendall(encode_frame(f))

        sender = threading.Thread(target=send)
        sender.start()
        assert [recv_frame(right) for _ in frames] == frames
        sender.join()
        left.sendall(encode_frame({"type": "ping"})[:6])
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match="closed inside a frame") as info:
            recv_frame(right)
        assert not isinstance(info.value, ChannelClosed)


def test_recv_frame_clean_eof_and_limit() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(encode_frame({"type": "stream", "text": "y" * 5000}))
        with pytest.raises(ProtocolError, match="over the 100-byte limit"):
            recv_frame(right, max_bytes=100)
    left, right = socket.socketpair()
    with left, right:
        left.close()
        with pytest.raises(ChannelClosed):
            recv_frame(right)


def test_frame_type_sets_document_the_reserved_llm_frames() -> None:
    assert {"exec", "interrupt", "ping", "shutdown", "llm_response"} == protocol.HOST_FRAME_TYPES
    assert {"ready", "stream", "display", "result", "pong", "llm_request"} == (
        protocol.AGENT_FRAME_TYPES
    )
