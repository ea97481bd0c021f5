"""Naming the field that broke a request's protobuf decoding.

gRPC hands the server raw bytes; when they do not parse (a string field that
is not UTF-8, a length that runs past the end), protobuf says only that the
message is corrupt. This walks the wire format along the message's
descriptor to find the first broken field, so the error can say which one.
"""

from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from service.errors import InvalidArgument

_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
_PACKED_WIDTH = {
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
}


class _Broken(Exception):
    """The bytes end inside a key or varint."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise _Broken


def _field_path(descriptor: Descriptor, number: int, prefix: str, seen: dict[int, int]) -> tuple[FieldDescriptor | None, str]:
    field = descriptor.fields_by_number.get(number)
    if field is None:
        return None, f"{prefix}<field {number}>"
    path = prefix + field.name
    if field.is_repeated:
        path += f"[{seen.get(number, 0)}]"
        seen[number] = seen.get(number, 0) + 1
    return field, path


def _skip_scalar(data: bytes, pos: int, wire_type: int) -> int:
    if wire_type == _VARINT:
        return _varint(data, pos)[1]
    width = {_FIXED64: 8, _FIXED32: 4}.get(wire_type)
    if width is None or pos + width > len(data):
        raise _Broken
    return pos + width


def _first_broken_field(data: bytes, descriptor: Descriptor, prefix: str = "") -> str | None:
    """Path of the first field whose bytes are broken, or None if every field reads."""
    pos, seen = 0, {}
    while pos < len(data):
        field, path = None, f"{prefix}<key>" if prefix else "request"
        try:
            key, pos = _varint(data, pos)
            field, path = _field_path(descriptor, key >> 3, prefix, seen)
            if key & 7 != _LENGTH_DELIMITED:
                pos = _skip_scalar(data, pos, key & 7)
                continue
            length, pos = _varint(data, pos)
        except _Broken:
            return path
        chunk, pos = data[pos : pos + length], pos + length
        if len(chunk) < length:
            return path
        if field is not None and field.type == FieldDescriptor.TYPE_STRING:
            try:
                chunk.decode("utf-8")
            except UnicodeDecodeError:
                return path
        elif field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
            inner = _first_broken_field(chunk, field.message_type, path + ".")
            if inner is not None:
                return inner
        elif field is not None and field.is_repeated and not _packed_ok(chunk, field.type):
            return prefix + field.name
    return None


def _packed_ok(chunk: bytes, field_type: int) -> bool:
    """A packed repeated scalar: whole fixed-width values, or varints that end inside the chunk."""
    width = _PACKED_WIDTH.get(field_type)
    if width is not None:
        return len(chunk) % width == 0
    try:
        pos = 0
        while pos < len(chunk):
            _, pos = _varint(chunk, pos)
    except _Broken:
        return False
    return True


def undecodable_request(raw: bytes, descriptor: Descriptor, error: DecodeError) -> InvalidArgument:
    """The InvalidArgument for bytes that do not parse as ``descriptor``'s message, naming the broken field when it can."""
    reason = str(error).rsplit(": ", 1)[-1]
    field = _first_broken_field(raw, descriptor) or "request"
    return InvalidArgument(field, f"the request does not decode as {descriptor.full_name} ({reason}): send valid protobuf; string fields must be UTF-8")
