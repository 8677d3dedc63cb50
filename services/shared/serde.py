"""Protobuf (de)serialisation with errors that say which contract and why."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError, Message

M = TypeVar("M", bound=Message)


class PoisonMessage(ValueError):
    """A message that cannot be decoded or fails validation; it belongs in the DLQ."""


def decode(message_type: type[M], data: bytes | None, required: tuple[str, ...] = ()) -> M:
    """Parse `data` as `message_type`; every field in `required` must be set (non-default)."""
    if data is None:
        raise PoisonMessage(f"{message_type.DESCRIPTOR.full_name}: empty message (tombstone)")
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError) as exc:
        raise PoisonMessage(f"{message_type.DESCRIPTOR.full_name}: not a valid protobuf ({exc})") from None
    missing = [name for name in required if not getattr(msg, name)]
    if missing:
        raise PoisonMessage(f"{message_type.DESCRIPTOR.full_name}: missing required field(s) {', '.join(missing)}")
    return msg


def encode(msg: Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


def to_json_dict(msg: Message) -> dict:
    """A contract message as JSON-ready dict: proto field names, every field present (webhooks, api, evidence)."""
    return MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
