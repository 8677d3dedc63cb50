import pytest
from pydantic import ValidationError

from services.pos.gateway.canonical import PosEventIn, context_errors
from services.shared.contracts.pos_event_pb2 import PosEventType
from services.shared.storeconfig import load_store_config
from tests.unit.test_storeconfig import SAMPLE

VALID = {
    "event_id": "pos-1", "type": "refund", "store_id": "store-001", "register_id": "reg-1",
    "event_time": "2026-11-25T10:00:00+00:00", "currency": "GBP", "total_minor": 2999,
    "items": [{"sku": "SKU-1", "quantity": 1, "unit_price_minor": 2999}],
}


def test_valid_event_converts_to_protobuf():
    proto = PosEventIn(**VALID).to_proto()
    assert proto.type == PosEventType.POS_EVENT_TYPE_REFUND
    assert proto.event_time_ms == 1795600800000
    assert proto.items[0].sku == "SKU-1"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"event_id": None}, "event_id"),
        ({"type": "steal"}, "type"),
        ({"event_time": "2026-11-25T10:00:00"}, "event_time"),  # no time zone
        ({"currency": "pounds"}, "currency"),
        ({"items": [{"sku": "", "unit_price_minor": 1}]}, "items"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_event_names_the_field(change, field):
    body = {**VALID, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValidationError) as err:
        PosEventIn(**body)
    assert field in {str(part) for e in err.value.errors() for part in e["loc"]}


def test_unknown_store_or_register_and_future_times_are_reported():
    config = load_store_config(SAMPLE)
    assert context_errors(PosEventIn(**VALID), config, 300) == []
    [error] = context_errors(PosEventIn(**{**VALID, "register_id": "reg-9"}), config, 300)
    assert error["loc"] == ["body", "register_id"]
    [error] = context_errors(PosEventIn(**{**VALID, "event_time": "2099-01-01T00:00:00Z"}), config, 300)
    assert error["loc"] == ["body", "event_time"] and "in the future" in error["msg"]
