"""Data-only encoding for everything that crosses between maia's processes.

Messages are msgpack. Besides msgpack's own types (None, bool, int, float, str, bytes, lists
and string-keyed dicts) the codec carries four extension types, each decoded into plain data
only:

- PIL images, as their mode, size and raw pixel bytes;
- numpy arrays of numeric or boolean dtype, as dtype, shape and bytes;
- tuples (so ``acts, masked = ...`` keeps its shape);
- :class:`Ref`, a name for an object that lives in another process (``system``).

Decoding never constructs anything else and never runs code, unlike pickle, whose payloads can
call any function. Anything malformed raises :class:`ProtocolError`, which callers treat as a
broken peer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from PIL import Image

# The largest message a peer may send: a call with dozens of 1024 px images fits.
MAX_MESSAGE_BYTES = 256 * 2**20

_EXT_IMAGE = 1
_EXT_ARRAY = 2
_EXT_TUPLE = 3
_EXT_REF = 4

_IMAGE_MODES = {"RGB": 3, "RGBA": 4, "L": 1}
_ARRAY_KINDS = set("biuf")  # bool, signed, unsigned, float: no objects, no strings
_MAX_DIMS = 8


class ProtocolError(Exception):
    """A message that is not well-formed maia data."""


@dataclass(frozen=True)
class Ref:
    """A reference to an object held by another process, e.g. ``Ref("system", "")``."""

    kind: str
    name: str = ""


def _default(obj: Any) -> Any:
    if isinstance(obj, Image.Image):
        if obj.mode not in _IMAGE_MODES:
            obj = obj.convert("RGBA" if "A" in obj.getbands() else "RGB")
        payload = msgpack.packb([obj.mode, obj.width, obj.height, obj.tobytes()])
        return msgpack.ExtType(_EXT_IMAGE, payload)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ARRAY_KINDS or obj.ndim > _MAX_DIMS:
            raise TypeError(f"cannot send a numpy array of dtype {obj.dtype} and {obj.ndim} dims")
        arr = np.ascontiguousarray(obj)
        payload = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()])
        return msgpack.ExtType(_EXT_ARRAY, payload)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, encode(list(obj)))
    if isinstance(obj, Ref):
        return msgpack.ExtType(_EXT_REF, msgpack.packb([obj.kind, obj.name]))
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot send a {type(obj).__name__} between processes")


def encode(obj: Any) -> bytes:
    """``obj`` as bytes. Raises TypeError for anything that is not plain data."""
    return msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=True,
        use_list=True,
        ext_hook=_ext_hook,
    )


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_TUPLE:
        items = _unpack(data)
        if not isinstance(items, list):
            raise ProtocolError("a tuple must hold a list")
        return tuple(items)
    fields = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    if code == _EXT_IMAGE:
        if not (isinstance(fields, list) and len(fields) == 4):
            raise ProtocolError("malformed image")
        mode, width, height, pixels = fields
        bands = _IMAGE_MODES.get(mode) if isinstance(mode, str) else None
        if (
            bands is None
            or not all(isinstance(v, int) and 0 < v <= 16384 for v in (width, height))
            or not isinstance(pixels, bytes)
            or len(pixels) != width * height * bands
        ):
            raise ProtocolError("malformed image")
        return Image.frombytes(mode, (width, height), pixels)
    if code == _EXT_ARRAY:
        if not (isinstance(fields, list) and len(fields) == 3):
            raise ProtocolError("malformed array")
        dtype_str, shape, raw = fields
        try:
            dtype = np.dtype(dtype_str) if isinstance(dtype_str, str) else None
        except TypeError:
            dtype = None
        if (
            dtype is None
            or dtype.kind not in _ARRAY_KINDS
            or not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(isinstance(s, int) and s >= 0 for s in shape)
            or not isinstance(raw, bytes)
            or len(raw) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        ):
            raise ProtocolError("malformed array")
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if code == _EXT_REF:
        if not (
            isinstance(fields, list)
            and len(fields) == 2
            and all(isinstance(f, str) for f in fields)
        ):
            raise ProtocolError("malformed reference")
        return Ref(fields[0], fields[1])
    raise ProtocolError(f"unknown extension type {code}")


def decode(data: bytes) -> Any:
    """The data ``encode`` wrote. Raises :class:`ProtocolError` for anything else."""
    try:
        return _unpack(data)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack's many error types, and bad values inside extensions
        raise ProtocolError(f"undecodable message ({type(exc).__name__}: {exc})") from None
