"""The learned-risk features, one definition for training (modeling/risk) and for serving (the api).

Two feature vectors:

- **return risk**, for a return or refund at the till, decided while the customer waits: the
  chain-wide history of the card or customer token, the employee keying it in, the link to the
  original sale, the return itself and what the register's camera sees right now;
- **alert triage**, for an alert the correlator raised: its rule, zone kind, dwell, anomaly level,
  amount, store time and the store's record of confirmed alerts.

Both are computed here from plain inputs that the api can build at decision time and the synthetic
generator builds from its simulated chain, so training and serving can never disagree on what a
feature means. Each feature has a wording, a `str.format` template over the whole vector, so a
model's reason reads as a fact ("7 returns with this card or account in 30 days at 4 stores").

Values are floats with no missing values: where a feature does not apply (no original sale, a
camera that could not see) it is `NOT_APPLICABLE` (-1), which the trees split on like any value,
and its wording says so. Counts and sums include the return being assessed, so a first return
counts 1. Histories may hold more than the windows need; what is after the event is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, get_args
from zoneinfo import ZoneInfo

from services.shared.contracts.alert_pb2 import Alert
from services.shared.contracts.pos_event_pb2 import PosEvent
from services.shared.rulesconfig import RULE_NAMES
from services.shared.storeconfig import ZoneKind

NOT_APPLICABLE = -1.0
DAY_MS = 86_400_000
CASH_TENDERS = frozenset({"cash", "cash_back", "cashback"})
# A prefix for feature values stored in an Alert's `facts` (what was known when it was decided).
FACT_PREFIX = "risk."
Kind = Literal["return", "triage"]
KINDS: tuple[Kind, ...] = ("return", "triage")


@dataclass(frozen=True)
class Feature:
    """A feature's name and how to say its value: `wording` (a flag that is set, or any value),
    `wording_off` (a flag that is not set) and `wording_na` (NOT_APPLICABLE); each a `str.format`
    template over the whole feature vector. An empty wording says nothing: no reason to give."""

    name: str
    wording: str
    wording_off: str = ""
    wording_na: str = ""
    flag: bool = False

    def words(self, values: Mapping[str, float]) -> str:
        value = values[self.name]
        if value == NOT_APPLICABLE:
            template = self.wording_na
        elif self.flag:
            template = self.wording if value >= 0.5 else self.wording_off
        else:
            template = self.wording
        return template.format(**values) if template else ""


def _flag(name: str, on: str, off: str, na: str = "") -> Feature:
    return Feature(name, on, off, na, flag=True)


RETURN_FEATURES: tuple[Feature, ...] = (
    # The card or customer token, chain-wide.
    Feature("token_returns_7d", "{token_returns_7d:.0f} returns with this card or account in 7 days"),
    Feature("token_returns_30d", "{token_returns_30d:.0f} returns with this card or account in 30 days at {token_stores_30d:.0f} stores"),
    Feature("token_returns_90d", "{token_returns_90d:.0f} returns with this card or account in 90 days"),
    Feature("token_stores_30d", "returns at {token_stores_30d:.0f} different stores in 30 days"),
    Feature("token_refunded_30d", "{token_refunded_30d:.2f} refunded to this card or account in 30 days"),
    Feature("token_no_receipt_90d", "{token_no_receipt_90d:.0f} returns without a receipt in 90 days with this card or account"),
    # The employee keying it in.
    Feature("employee_refunds_7d", "the employee keyed {employee_refunds_7d:.0f} refunds in 7 days"),
    Feature("employee_refund_share_30d", "{employee_refund_share_30d:.0%} of the employee's transactions in 30 days were refunds"),
    Feature("employee_own_token_refunds_90d", "{employee_own_token_refunds_90d:.0f} refunds by the employee to their own card or account in 90 days"),
    _flag("to_employee_own_token", "refund to the employee's own card or account", "not to the employee's own card or account"),
    # The link to the original sale.
    _flag("has_receipt", "with a receipt (original transaction named)", "no receipt (no original transaction)"),
    Feature("days_since_purchase", "{days_since_purchase:.0f} days after the purchase", wording_na="no original sale to date it by"),
    _flag("same_store_as_sale", "at the store of the original sale", "at another store than the original sale", "no original sale to compare the store with"),
    Feature("amount_vs_original", "{amount_vs_original:.0%} of the original sale's amount", wording_na="no original sale to compare the amount with"),
    # The return itself.
    Feature("amount", "a return of {amount:.2f}"),
    Feature("item_count", "{item_count:.0f} items returned"),
    _flag("tender_cash", "refunded in cash", "refunded to a card or account"),
    Feature("local_hour", "at {local_hour:02.0f}:00 store time"),
    _flag("weekend", "on a weekend", "on a weekday"),
    # The register's camera, now.
    _flag("customer_present", "customer at the counter per the camera", "nobody at the counter per the camera"),
    _flag("merchandise_present", "merchandise on the counter per the camera", "no merchandise on the counter per the camera"),
    _flag("camera_unknown", "the camera could not tell who or what was at the counter", "the camera watched the counter"),
)

ZONE_KINDS: tuple[str, ...] = get_args(ZoneKind)
# Where a rule's alert happens when its facts name no zone kind.
RULE_ZONE_KIND = {"refund_without_customer": "counter_customer", "refund_without_merchandise": "counter_merchandise", "concealment": "high_value"}


def _triage_features() -> tuple[Feature, ...]:
    rules = tuple(_flag(f"rule_{rule}", f"a {rule} alert", f"not a {rule} alert") for rule in RULE_NAMES)
    zones = tuple(_flag(f"zone_{kind}", f"in a {kind} zone", f"not in a {kind} zone") for kind in ZONE_KINDS)
    return (*rules, *zones,
            Feature("dwell_s", "{dwell_s:.0f} s in the zone"),
            Feature("anomaly_level", "anomaly at {anomaly_level:.1f}x the camera's normal level"),
            Feature("amount", "{amount:.2f} at stake"),  # dwell, anomaly and amount say nothing where the rule has none
            Feature("local_hour", "at {local_hour:02.0f}:00 store time"),
            _flag("weekend", "on a weekend", "on a weekday"),
            Feature("store_confirm_rate", "{store_confirm_rate:.0%} of this store's judged alerts were confirmed"))


TRIAGE_FEATURES: tuple[Feature, ...] = _triage_features()
FEATURES: dict[Kind, tuple[Feature, ...]] = {"return": RETURN_FEATURES, "triage": TRIAGE_FEATURES}


def feature_names(kind: Kind) -> list[str]:
    return [f.name for f in FEATURES[kind]]


def vector(kind: Kind, values: Mapping[str, float]) -> list[float]:
    """The values in the model's column order; a missing feature is named (a caller's bug, not data)."""
    missing = [name for name in feature_names(kind) if name not in values]
    if missing:
        raise ValueError(f"{kind} features missing: {', '.join(missing)}")
    return [float(values[name]) for name in feature_names(kind)]


# --- return risk ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PastReturn:
    """An earlier return or refund of the same card or customer token, anywhere in the chain."""

    time_ms: int
    store_id: str
    total_minor: int
    with_receipt: bool


@dataclass(frozen=True)
class EmployeeTransaction:
    """An earlier transaction keyed in by the same employee (sales count for the refund share)."""

    time_ms: int
    refund: bool
    to_own_token: bool = False


@dataclass(frozen=True)
class OriginalSale:
    """The sale a return names, where it is known."""

    time_ms: int
    store_id: str
    total_minor: int


@dataclass(frozen=True)
class CameraView:
    """What the register's camera saw in the return's window: True, False, or None (could not tell)."""

    customer: bool | None
    merchandise: bool | None


@dataclass(frozen=True)
class ReturnContext:
    """Everything a return's features come from, known at decision time."""

    event: PosEvent
    timezone: str
    token_history: Sequence[PastReturn] = ()
    employee_history: Sequence[EmployeeTransaction] = ()
    employee_tokens: frozenset[str] = frozenset()
    original_sale: OriginalSale | None = None
    camera: CameraView = CameraView(None, None)


def _local(time_ms: int, timezone: str) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000, ZoneInfo(timezone))


def _within(time_ms: int, now_ms: int, days: int) -> bool:
    return now_ms - days * DAY_MS < time_ms <= now_ms


def _seen(value: bool | None) -> float:
    return NOT_APPLICABLE if value is None else float(value)


def return_features(ctx: ReturnContext) -> dict[str, float]:
    """The return-risk feature vector of `ctx.event` (see RETURN_FEATURES)."""
    event, now = ctx.event, ctx.event.event_time_ms
    amount = abs(event.total_minor) / 100
    has_receipt = bool(event.original_transaction_id)
    own = bool(ctx.employee_tokens & {t for t in (event.card_token, event.customer_token) if t})
    past = [r for r in ctx.token_history if r.time_ms < now]
    month = [r for r in past if _within(r.time_ms, now, 30)]
    quarter = [r for r in past if _within(r.time_ms, now, 90)]
    employee = [t for t in ctx.employee_history if t.time_ms < now]
    employee_month = [t for t in employee if _within(t.time_ms, now, 30)]
    month_refunds = sum(t.refund for t in employee_month)
    sale = ctx.original_sale
    local = _local(now, ctx.timezone)
    customer, merchandise = _seen(ctx.camera.customer), _seen(ctx.camera.merchandise)
    return {
        "token_returns_7d": 1.0 + sum(_within(r.time_ms, now, 7) for r in past),
        "token_returns_30d": 1.0 + len(month),
        "token_returns_90d": 1.0 + len(quarter),
        "token_stores_30d": float(len({r.store_id for r in month} | {event.store_id})),
        "token_refunded_30d": amount + sum(abs(r.total_minor) for r in month) / 100,
        "token_no_receipt_90d": float(not has_receipt) + sum(not r.with_receipt for r in quarter),
        "employee_refunds_7d": 1.0 + sum(t.refund and _within(t.time_ms, now, 7) for t in employee),
        "employee_refund_share_30d": (month_refunds + 1) / (len(employee_month) + 1),
        "employee_own_token_refunds_90d": float(own) + sum(t.refund and t.to_own_token and _within(t.time_ms, now, 90) for t in employee),
        "to_employee_own_token": float(own),
        "has_receipt": float(has_receipt),
        "days_since_purchase": max(0.0, (now - sale.time_ms) / DAY_MS) if sale else NOT_APPLICABLE,
        "same_store_as_sale": float(sale.store_id == event.store_id) if sale else NOT_APPLICABLE,
        "amount_vs_original": round(abs(event.total_minor) / sale.total_minor, 4) if sale and sale.total_minor > 0 else NOT_APPLICABLE,
        "amount": amount,
        "item_count": float(sum(max(item.quantity, 0) for item in event.items)),
        "tender_cash": float(event.tender.strip().lower() in CASH_TENDERS),
        "local_hour": float(local.hour),
        "weekend": float(local.weekday() >= 5),
        "customer_present": customer,
        "merchandise_present": merchandise,
        "camera_unknown": float(customer == NOT_APPLICABLE or merchandise == NOT_APPLICABLE),
    }


# --- alert triage -----------------------------------------------------------------------------------

# Before a store has verdicts, its confirm rate is this prior, worth this many verdicts.
CONFIRM_PRIOR = 0.5
CONFIRM_PRIOR_WEIGHT = 10.0


def store_confirm_rate(confirmed: int, judged: int, prior: float = CONFIRM_PRIOR, weight: float = CONFIRM_PRIOR_WEIGHT) -> float:
    """A store's share of confirmed alerts, pulled to the prior while it has few verdicts (a store
    with 1 of 1 confirmed is not a 100 % store), rather than a one-hot column per store."""
    return round((confirmed + prior * weight) / (judged + weight), 4)


@dataclass(frozen=True)
class TriageContext:
    """What an alert's triage features need besides the alert."""

    timezone: str = "UTC"
    # The store's confirmed share over the verdicts known before this alert (store_confirm_rate).
    confirm_rate: float = CONFIRM_PRIOR
    # zone id -> kind from the store config, for alerts that name a zone but not its kind.
    zone_kinds: Mapping[str, str] = field(default_factory=dict)


def _number(text: str | None) -> float:
    """The leading number of a fact ("12.50 EUR" -> 12.5); NOT_APPLICABLE when there is none."""
    if not text:
        return NOT_APPLICABLE
    try:
        value = float(text.split()[0])
    except ValueError:
        return NOT_APPLICABLE
    return value if math.isfinite(value) else NOT_APPLICABLE


def alert_zone_kind(alert: Alert, zone_kinds: Mapping[str, str]) -> str:
    """The kind of zone an alert happened in: its facts, the store config, or what its rule implies."""
    facts = alert.facts
    return facts.get("zone_kind") or zone_kinds.get(facts.get("zone", ""), "") or RULE_ZONE_KIND.get(alert.rule, "")


def triage_features(alert: Alert, ctx: TriageContext) -> dict[str, float]:
    """The triage feature vector of an alert, from its rule, facts and times (see TRIAGE_FEATURES)."""
    facts = alert.facts
    kind = alert_zone_kind(alert, ctx.zone_kinds)
    local = _local(alert.event_time_ms, ctx.timezone)
    values = {f"rule_{rule}": float(alert.rule == rule) for rule in RULE_NAMES}
    values.update({f"zone_{zone}": float(kind == zone) for zone in ZONE_KINDS})
    values.update({
        "dwell_s": _number(facts.get("dwell_s")),
        "anomaly_level": _number(facts.get("anomaly_score")),
        "amount": _number(facts.get("amount") or facts.get("total")),
        "local_hour": float(local.hour),
        "weekend": float(local.weekday() >= 5),
        "store_confirm_rate": float(ctx.confirm_rate),
    })
    return values


# --- recording features with a decision ---------------------------------------------------------------

def as_facts(kind: Kind, values: Mapping[str, float]) -> dict[str, str]:
    """Feature values as Alert facts (`risk.<name>`), so the features known when a return was decided
    travel with its alert and HQ's verdict on it becomes a training row (modeling/risk/train.py)."""
    return {f"{FACT_PREFIX}{name}": repr(value) for name, value in zip(feature_names(kind), vector(kind, values), strict=True)}


def from_facts(kind: Kind, facts: Mapping[str, str]) -> dict[str, float] | None:
    """The feature values recorded in an alert's facts, or None unless every feature is there."""
    values: dict[str, float] = {}
    for name in feature_names(kind):
        text = facts.get(f"{FACT_PREFIX}{name}")
        if text is None:
            return None
        try:
            values[name] = float(text)
        except ValueError:
            return None
    return values
