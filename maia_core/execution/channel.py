"""Framed, data-only messages over a Unix socket, with file descriptors passed alongside.

A frame is an 8-byte header (the payload length, big-endian) and a payload encoded by
:mod:`maia_core.execution.codec`. File descriptors (a socket handed to a kernel, say) ride on
the header with ``SCM_RIGHTS``, and only in one direction: from the main process to a kernel
or the host. A channel that does not accept them (every channel that reads from a kernel, and
the main process's) closes any descriptor or other ancillary data that arrives and raises
:class:`~maia_core.execution.codec.ProtocolError`, so a kernel cannot fill another process's
descriptor table. A peer that closes, sends garbage or a frame over the size limit raises
:class:`ChannelClosed` or :class:`~maia_core.execution.codec.ProtocolError`; either way the
peer is treated as broken.
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
_FD_SIZE = array.array("i").itemsize
# Room for the most descriptors a channel accepts (more arrive truncated, and are refused).
_ANCILLARY = socket.CMSG_SPACE(_MAX_FDS * _FD_SIZE)


class ChannelClosed(Exception):
    """The peer went away (EOF, reset, broken pipe)."""


class Channel:
    """One end of a connected stream socket. ``send`` is thread-safe; one thread receives.

    ``accept_fds``: whether descriptors sent by the peer are kept (for :meth:`take_fds`) or
    refused. Only a channel whose peer is the main process accepts them.
    """

    def __init__(self, sock: socket.socket, *, accept_fds: bool = False):
        self.sock = sock
        self.accept_fds = accept_fds
        self._send_lock = threading.Lock()
        self._fds: list[int] = []
        self.closed = False

    @classmethod
    def pair(cls) -> tuple[Channel, socket.socket]:
        """A channel and the other end's raw socket (to hand to a child process)."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return cls(a), b

    @classmethod
    def from_fd(cls, fd: int, *, accept_fds: bool = False) -> Channel:
        return cls(socket.socket(fileno=fd), accept_fds=accept_fds)

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

    def _read_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            try:
                # Always with room for ancillary data: descriptors sent without it would be
                # dropped silently by the kernel, and we must know a peer tried.
                data, ancillary, flags, _ = self.sock.recvmsg(
                    min(n - len(chunks), 1 << 20), _ANCILLARY
                )
            except (ConnectionError, OSError) as exc:
                raise ChannelClosed(f"{type(exc).__name__}: {exc}") from None
            if ancillary or flags & socket.MSG_CTRUNC:
                self._ancillary(ancillary)
            if not data:
                raise ChannelClosed("the other process closed the connection")
            chunks += data
        return bytes(chunks)

    def _ancillary(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        fds: list[int] = []
        other = False
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % _FD_SIZE
                fds.extend(array.array("i", data[:usable]))
            else:
                other = True
        if self.accept_fds and not other and len(self._fds) + len(fds) <= _MAX_FDS:
            for fd in fds:  # not for the processes this one starts
                os.set_inheritable(fd, False)
            self._fds.extend(fds)
            return
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        raise ProtocolError(
            "the peer sent file descriptors or other ancillary data, which this channel refuses"
        )

    def recv(self) -> Any:
        """The next message (blocking). Passed descriptors wait in :meth:`take_fds`."""
        header = self._read_exact(_HEADER.size)
        (length,) = _HEADER.unpack(header)
        if length > MAX_MESSAGE_BYTES:
            raise ProtocolError(
                f"a message of {length} bytes is over the {MAX_MESSAGE_BYTES} limit"
            )
        return decode(self._read_exact(length))

    def hung_up(self) -> bool:
        """Whether the peer has closed its end (no wait; a message waiting is not a hang-up)."""
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

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
