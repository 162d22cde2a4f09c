"""The data-only wire format: what round-trips, and what is refused."""

from __future__ import annotations

import pickle
import socket
import struct

import msgpack
import numpy as np
import pytest
from PIL import Image

from maia_core.execution.channel import Channel, ChannelClosed
from maia_core.execution.codec import ProtocolError, Ref, decode, encode


def test_plain_data_images_arrays_tuples_and_refs_round_trip():
    img = Image.new("RGB", (5, 3), (10, 20, 30))
    rgba = Image.new("RGBA", (2, 2), (1, 2, 3, 4))
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = {
        "a": [1, 2.5, None, True, "x", b"raw"],
        "t": (1, (2, 3)),
        "img": img,
        "rgba": rgba,
        "arr": arr,
        "ref": Ref("system"),
        "scalar": np.float64(1.5),
    }
    back = decode(encode(obj))
    assert back["a"] == [1, 2.5, None, True, "x", b"raw"]
    assert back["t"] == (1, (2, 3)) and isinstance(back["t"], tuple)
    assert back["img"].mode == "RGB" and back["img"].tobytes() == img.tobytes()
    assert back["rgba"].getpixel((1, 1)) == (1, 2, 3, 4)
    assert back["arr"].dtype == np.float32 and np.array_equal(back["arr"], arr)
    assert back["ref"] == Ref("system") and back["scalar"] == 1.5
    # other image modes travel as RGB
    assert decode(encode(Image.new("P", (2, 2)))).mode == "RGB"


def test_objects_that_are_not_data_cannot_be_sent():
    class Thing:
        pass

    for bad in (Thing(), np.array([object()]), lambda: 1):
        with pytest.raises(TypeError):
            encode(bad)


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps(("backbone", [1, 2])),
        b"\xc1",  # a byte msgpack never uses
        msgpack.packb(msgpack.ExtType(9, b"")),  # unknown extension
        msgpack.packb(
            msgpack.ExtType(1, msgpack.packb(["RGB", 4, 4, b"short"]))
        ),  # wrong pixel count
        msgpack.packb(msgpack.ExtType(1, msgpack.packb(["CMYK", 1, 1, b"abcd"]))),
        msgpack.packb(msgpack.ExtType(2, msgpack.packb(["|O", [1], b"12345678"]))),  # object dtype
        msgpack.packb(msgpack.ExtType(2, msgpack.packb(["<f4", [3], b"1234"]))),  # wrong byte count
        msgpack.packb({1: "int key"}),
    ],
)
def test_malformed_messages_raise_protocol_errors(payload):
    with pytest.raises(ProtocolError):
        decode(payload)


def test_channel_frames_messages_and_passes_descriptors():
    a, b_sock = Channel.pair()
    b = Channel(b_sock, accept_fds=True)  # as the kernel and the host take the main process's
    r, w = socket.socketpair()
    a.send({"op": "hello", "img": Image.new("L", (3, 3), 7)}, fds=[r.fileno()])
    msg = b.recv()
    assert msg["op"] == "hello" and msg["img"].getpixel((0, 0)) == 7
    [fd] = b.take_fds()
    passed = socket.socket(fileno=fd)
    w.sendall(b"through the passed socket")
    assert passed.recv(100) == b"through the passed socket"
    # a frame over the size limit is refused before it is read
    b_sock.sendall(struct.pack(">Q", 2**40))
    with pytest.raises(ProtocolError, match="over the"):
        a.recv()
    b.close()
    with pytest.raises(ChannelClosed):
        a.recv()
    for s in (passed, r, w):
        s.close()
    a.close()
