"""Framed, data-only messages over a Unix socket, with file descriptors passed alongside.

A frame is an 8-byte header (the payload length, big-endian) and a payload encoded by
:mod:`maia_core.execution.codec`. File descriptors (a socket handed to a kernel, say) ride on
the header with ``SCM_RIGHTS``. A peer that closes, sends garbage or a frame over the size
limit raises :class:`ChannelClosed` or :class:`~maia_core.execution.codec.ProtocolError`;
either way the peer is treated as broken.
"""

from __future__ import annotations

import array
import contextlib
import os
import select
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from maia_core.execution.codec import MAX_MESSAGE_BYTES, ProtocolError, decode, encode

_HEADER = struct.Struct(">Q")
_MAX_FDS = 8


class ChannelClosed(Exception):
    """The peer went away (EOF, reset, broken pipe)."""


class Channel:
    """One end of a connected stream socket. ``send`` is thread-safe; one thread receives."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._send_lock = threading.Lock()
        self._fds: list[int] = []
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[Channel, socket.socket]:
        """A channel and the other end's raw socket (to hand to a child process)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a), b

    @classmethod
    def from_fd(cls, fd: int) -> Channel:
        return cls(socket.socket(fileno=fd))

    def fileno(self) -> int:
        return self.sock.fileno()

    # -- sending --------------------------------------------------------------------------
    def send(self, obj: Any, fds: Sequence[int] = ()) -> None:
        """Send ``obj`` (plain data); raises ChannelClosed if the peer is gone."""
        payload = encode(obj)
        header = _HEADER.pack(len(payload))
        try:
            with self._send_lock:
                if fds:
                    self.sock.sendmsg(
                        [header],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                    )
                else:
                    self.sock.sendall(header)
                self.sock.sendall(payload)
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            raise ChannelClosed(f"{type(exc).__name__}: {exc}") from None

    # -- receiving ------------------------------------------------------------------------
    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether a message (or EOF) is waiting, within ``timeout`` seconds."""
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            return True  # closed underneath us: recv will say so
        return bool(ready)

    def _read_exact(self, n: int, collect_fds: bool) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                if collect_fds:
                    data, fds, _flags, _addr = socket.recv_fds(self.sock, n - len(chunks), _MAX_FDS)
                    self._fds.extend(fds)
                else:
                    data = self.sock.recv(min(n - len(chunks), 1 << 20))
            except (ConnectionError, OSError) as exc:
                raise ChannelClosed(f"{type(exc).__name__}: {exc}") from None
            if not data:
                raise ChannelClosed("the other process closed the connection")
            chunks += data
        return bytes(chunks)

    def recv(self) -> Any:
        """The next message (blocking). Passed descriptors wait in :meth:`take_fds`."""
        header = self._read_exact(_HEADER.size, collect_fds=True)
        (length,) = _HEADER.unpack(header)
        if length > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                f"a message of {length} bytes is over the {MAX_MESSAGE_BYTES} limit"
            )
        return decode(self._read_exact(length, collect_fds=False))

    def take_fds(self) -> list[int]:
        """Descriptors received so far (the caller owns them now)."""
        fds, self._fds = self._fds, []
        return fds

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in self.take_fds():
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self.sock.close()
