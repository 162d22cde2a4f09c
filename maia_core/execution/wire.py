"""maia's objects as wire data, and back, checked field by field.

Everything a process agent code can reach sends is validated here before the receiver uses it:
a wrong type or a missing field raises :class:`~maia_core.execution.codec.ProtocolError`.
"""

from __future__ import annotations

from typing import Any

from maia_core.execution.codec import ProtocolError
from maia_core.transcript import ImagePart, Message, Part, TextPart
from maia_core.units import LayerInfo, Unit

_ROLES = ("system", "user", "assistant")


def need(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    """``value`` if it is a ``kind``, else a ProtocolError naming ``what``."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise ProtocolError(
            f"{what} must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}"
        )
    return value


def field(d: Any, key: str, kind: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
    need(d, dict, what)
    if key not in d:
        if default is ...:
            raise ProtocolError(f"{what} has no {key!r}")
        return default
    value = d[key]
    if value is None and default is None:
        return None
    return need(value, kind, f"{what}.{key}")


def optional_str(d: dict[str, Any], key: str, what: str) -> str | None:
    return field(d, key, str, what, None)


# -- transcript ---------------------------------------------------------------------------------


def part_to_wire(part: Part) -> dict[str, Any]:
    if isinstance(part, ImagePart):
        return {
            "type": "image",
            "data": part.data,
            "media_type": part.media_type,
            "source": part.source,
        }
    return {"type": "text", "text": part.text, "source": part.source}


def part_from_wire(d: Any) -> Part:
    kind = field(d, "type", str, "part")
    source = optional_str(d, "source", "part")
    if kind == "image":
        data = field(d, "data", bytes, "image part")
        media_type = field(d, "media_type", str, "image part")
        return ImagePart(data, media_type, source)
    if kind == "text":
        return TextPart(field(d, "text", str, "text part"), source)
    raise ProtocolError(f"unknown part type {kind!r}")


def parts_from_wire(items: Any) -> list[Part]:
    return [part_from_wire(p) for p in need(items, list, "parts")]


def message_to_wire(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "parts": [part_to_wire(p) for p in message.parts],
        "meta": message.meta,
    }


def message_from_wire(d: Any) -> Message:
    role = field(d, "role", str, "message")
    if role not in _ROLES:
        raise ProtocolError(f"unknown message role {role!r}")
    return Message(
        role,
        parts_from_wire(field(d, "parts", list, "message")),
        field(d, "meta", dict, "message", {}),
    )


def messages_from_wire(items: Any) -> list[Message]:
    return [message_from_wire(m) for m in need(items, list, "messages")]


# -- units and layers ------------------------------------------------------------------------------


def unit_to_wire(unit: Unit) -> dict[str, Any]:
    return {"layer": unit.layer, "index": unit.index}


def unit_from_wire(d: Any) -> Unit:
    return Unit(field(d, "layer", str, "unit"), field(d, "index", int, "unit"))


def layer_to_wire(info: LayerInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "units": info.units,
        "spatial": list(info.spatial) if info.spatial else None,
        "kind": info.kind,
        "shape": list(info.shape),
    }


def layer_from_wire(d: Any) -> LayerInfo:
    spatial = field(d, "spatial", list, "layer", None)
    if spatial is not None and (len(spatial) != 2 or not all(isinstance(s, int) for s in spatial)):
        raise ProtocolError("layer.spatial must be two integers")
    shape = field(d, "shape", list, "layer", [])
    return LayerInfo(
        field(d, "name", str, "layer"),
        field(d, "units", int, "layer"),
        tuple(spatial) if spatial else None,
        field(d, "kind", str, "layer", "conv"),
        tuple(need(s, int, "layer.shape") for s in shape),
    )


# -- cells ----------------------------------------------------------------------------------------


def cell_to_wire(result: Any) -> dict[str, Any]:
    return {
        "parts": [part_to_wire(p) for p in result.parts],
        "error": result.error,
        "seconds": float(result.seconds),
        "restarted": result.restarted,
        "records": result.records,
        "host_seconds": float(result.host_seconds),
    }


def cell_from_wire(d: Any) -> Any:
    from maia_core.execution.cells import CellResult

    seconds = field(d, "seconds", (int, float), "cell result", 0.0)
    return CellResult(
        parts_from_wire(field(d, "parts", list, "cell result")),
        optional_str(d, "error", "cell result"),
        float(seconds),
        optional_str(d, "restarted", "cell result"),
        records=[need(r, dict, "record") for r in field(d, "records", list, "cell result", [])],
        host_seconds=float(field(d, "host_seconds", (int, float), "cell result", 0.0)),
    )
