"""The routing file: who is told about which alert, on which contacts, when, and who next.

Pure logic (no Redis, no network), tested on its own: routes match an alert by store, region, rule
and severity; a route's levels say whom to notify at once and whom after N minutes without an
acknowledgement; an on-call schedule says who a `schedule:<name>` target is at a given moment (shifts
in the schedule's time zone, a handover at each shift's start); quiet hours hold a recipient's
non-urgent notifications for a digest at the end of them.

Secrets (webhook keys, tokens inside Apprise URLs) are written `${SW_ROUTING_NAME}` and read from
the environment at start, so the file itself can live in a repository or a ConfigMap. Placeholders
are read only in a contact's `url` and `secret` (the fields that carry credentials) and only from
variables with the allowed prefix (`SW_ROUTING_`, the notifier setting `notifier_secret_env_prefix`):
the notifier's environment also holds its own secrets (Redis URL, S3 keys), and a routing file must
not be able to send those to a URL of its choosing. Anything else fails at start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.notifier.channels import ContactConfig
from services.shared.contracts.alert_pb2 import Alert, Severity
from services.shared.settings import yaml_problem

SEVERITIES = ("low", "medium", "high", "critical")
SeverityName = Literal["low", "medium", "high", "critical"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SCHEDULE_PREFIX = "schedule:"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The prefix a placeholder's variable must have unless the notifier is told otherwise.
DEFAULT_SECRET_ENV_PREFIX = "SW_ROUTING_"
# The contact fields that carry credentials (webhook `url` and `secret`, Apprise `url`): the only
# ones whose placeholders are read.
SECRET_FIELDS = frozenset({"url", "secret"})
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$")


def severity_name(severity: int) -> str:
    """The routing file's word for an alert's severity ("unspecified" ranks below low)."""
    return Severity.Name(severity).removeprefix("SEVERITY_").lower() if severity in Severity.values() else "unspecified"


def severity_rank(name: str) -> int:
    return SEVERITIES.index(name) + 1 if name in SEVERITIES else 0


class RoutingError(ValueError):
    """The routing file is invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _clock(value: str) -> time:
    if not _CLOCK.match(value):
        raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00-24:00)")
    return time(0, 0) if value == "24:00" else time.fromisoformat(value)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not an IANA time zone (for example Europe/London)") from None


def _check_clock(value: str) -> str:
    _clock(value)
    return value


def _check_zone(value: str) -> str:
    _zone(value)
    return value


ClockTime = Annotated[str, AfterValidator(_check_clock)]
TimeZoneName = Annotated[str, AfterValidator(_check_zone)]


class QuietHours(_Strict):
    """A daily span in the recipient's time zone; `start` after `end` spans midnight."""

    start: ClockTime
    end: ClockTime
    # Alerts of this severity and above still go out at once during quiet hours.
    except_severity: SeverityName = "critical"


class Recipient(_Strict):
    contacts: list[ContactConfig] = Field(min_length=1)
    timezone: TimeZoneName = "UTC"
    quiet_hours: QuietHours | None = None

    @model_validator(mode="after")
    def _unique_contact_names(self) -> Recipient:
        names = [c.name for c in self.contacts]
        if len(names) != len(set(names)):
            raise ValueError(f"contacts need distinct names (set `name` on each), got {names}")
        return self


class Shift(_Strict):
    """Who is on call from `start` to `end` on these days; a shift ending before it starts runs past midnight."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS), min_length=1)
    start: ClockTime = "00:00"
    end: ClockTime = "24:00"
    on_call: list[str] = Field(min_length=1)


class Schedule(_Strict):
    timezone: TimeZoneName
    shifts: list[Shift] = Field(min_length=1)
    # Who is told when no shift covers the moment (a gap in the rota must not swallow an alert).
    fallback: list[str] = Field(default_factory=list)


class Level(_Strict):
    after_min: float = Field(0.0, ge=0, le=7 * 24 * 60)
    notify: list[str] = Field(min_length=1)


class Match(_Strict):
    """Empty lists match everything."""

    stores: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    rules: list[str] = Field(default_factory=list)
    min_severity: SeverityName = "low"


class Route(_Strict):
    # Letters, digits and . _ - (a route's name is part of its escalations' keys, which use "|").
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    match: Match = Field(default_factory=Match)
    levels: list[Level] = Field(min_length=1)
    # Stop at the first matching route (otherwise every matching route applies).
    final: bool = False

    @model_validator(mode="after")
    def _levels_in_order(self) -> Route:
        delays = [level.after_min for level in self.levels]
        if delays != sorted(delays) or len(set(delays)) != len(delays):
            raise ValueError(f"levels must have increasing after_min, got {delays}")
        return self


class Limits(_Strict):
    # More than `max_per_window` notifications to one recipient within `window_s`: the rest of the
    # burst is held and sent as one digest `digest_after_s` after the first held alert.
    max_per_window: int = Field(5, ge=1, le=1_000_000)
    window_s: float = Field(300.0, gt=0, le=86400)
    digest_after_s: float = Field(60.0, gt=0, le=86400)
    # Alerts of this severity and above are never held for a burst's digest (quiet hours have their own).
    except_severity: SeverityName = "critical"


class Delivery(_Strict):
    # Exponential backoff per contact, from first_backoff_s doubling up to max_backoff_s; a
    # notification still undelivered after give_up_after_s goes to the DLQ.
    first_backoff_s: float = Field(0.5, gt=0, le=60)
    max_backoff_s: float = Field(30.0, gt=0, le=3600)
    give_up_after_s: float = Field(900.0, gt=0, le=7 * 86400)
    # Records of deliveries (and the dedupe keys) are kept this long.
    keep_days: float = Field(30.0, gt=0, le=400)


class RoutingConfig(_Strict):
    # Links in notifications: <dashboard_url>/alerts/<alert id>.
    dashboard_url: str = "http://127.0.0.1:8080"
    recipients: dict[str, Recipient] = Field(min_length=1)
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    routes: list[Route] = Field(min_length=1)
    limits: Limits = Field(default_factory=Limits)
    delivery: Delivery = Field(default_factory=Delivery)

    @model_validator(mode="after")
    def _references_exist(self) -> RoutingConfig:
        for name in self.recipients:
            if not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", name):
                raise ValueError(f"recipient name {name!r}: use letters, digits and . _ - @ (at most 64)")
        for name, schedule in self.schedules.items():
            for person in [p for shift in schedule.shifts for p in shift.on_call] + schedule.fallback:
                if person not in self.recipients:
                    raise ValueError(f"schedules.{name}: {person!r} is not in recipients")
        for route in self.routes:
            for level in route.levels:
                for target in level.notify:
                    if target.startswith(SCHEDULE_PREFIX):
                        if target.removeprefix(SCHEDULE_PREFIX) not in self.schedules:
                            raise ValueError(f"routes.{route.name}: {target!r} names no schedule")
                    elif target not in self.recipients:
                        raise ValueError(f"routes.{route.name}: {target!r} is not in recipients (a schedule is written schedule:<name>)")
        names = [r.name for r in self.routes]
        if len(names) != len(set(names)):
            raise ValueError(f"route names must be distinct, got {names}")
        return self

    def check_stores(self, store_ids: Iterable[str], regions: Iterable[str]) -> None:
        """Routes naming stores or regions the chain does not have are typos that would silence alerts."""
        stores, known_regions = set(store_ids), set(regions)
        for route in self.routes:
            for store in route.match.stores:
                if store not in stores:
                    raise RoutingError(f"routes.{route.name}.match.stores: {store!r} is not a store in the store config")
            for region in route.match.regions:
                if region not in known_regions:
                    raise RoutingError(f"routes.{route.name}.match.regions: {region!r} is no store's region")

    def channels(self) -> dict[str, tuple[str, Any]]:
        """Every contact by its channel id `<recipient>/<contact>`: (recipient, contact config)."""
        return {channel_id(name, c.name): (name, c) for name, r in self.recipients.items() for c in r.contacts}


def channel_id(recipient: str, contact: str) -> str:
    return f"{recipient}/{contact}"


def matching_routes(config: RoutingConfig, alert: Alert, region: str) -> list[Route]:
    matched = []
    for route in config.routes:
        m = route.match
        if m.stores and alert.store_id not in m.stores:
            continue
        if m.regions and region not in m.regions:
            continue
        # An incident (the notifier's page) matches a route by any of its reasons' rules.
        rules = [r for r in alert.facts.get("reasons", "").split(",") if r] or [alert.rule]
        if m.rules and not set(rules) & set(m.rules):
            continue
        if severity_rank(severity_name(alert.severity)) < severity_rank(m.min_severity):
            continue
        matched.append(route)
        if route.final:
            break
    return matched


@dataclass(frozen=True)
class OnCall:
    people: list[str]
    # The next moment the answer changes (a shift starts or ends), UTC; None when it never does.
    next_handover: datetime | None
    shift: str


def _shift_spans(shift: Shift, zone: ZoneInfo, around: datetime) -> list[tuple[datetime, datetime]]:
    """The shift's occurrences (UTC start, end) from the day before `around` to a week after it."""
    local = around.astimezone(zone)
    spans = []
    for offset in range(-1, 8):
        day = (local + timedelta(days=offset)).date()
        if DAYS[day.weekday()] not in shift.days:
            continue
        start_t, end_t = _clock(shift.start), _clock(shift.end)
        start = datetime.combine(day, start_t, tzinfo=zone)
        end_day = day + timedelta(days=1) if (shift.end == "24:00" or end_t <= start_t) else day
        end = datetime.combine(end_day, end_t, tzinfo=zone)
        spans.append((start.astimezone(UTC), end.astimezone(UTC)))
    return spans


def on_call(schedule: Schedule, at: datetime) -> OnCall:
    """Who is on call at `at` (aware datetime): the people of every shift covering it, else the fallback."""
    zone = _zone(schedule.timezone)
    people: list[str] = []
    names: list[str] = []
    boundaries: list[datetime] = []
    for index, shift in enumerate(schedule.shifts):
        for start, end in _shift_spans(shift, zone, at):
            if start <= at < end:
                people += [p for p in shift.on_call if p not in people]
                names.append(f"shift {index + 1} ({','.join(shift.days)} {shift.start}-{shift.end} {schedule.timezone})")
            boundaries += [b for b in (start, end) if b > at]
    if not people:
        people, names = list(schedule.fallback), ["fallback"]
    return OnCall(people, min(boundaries) if boundaries else None, "; ".join(names))


def quiet_until(recipient: Recipient, severity: int, at: datetime) -> datetime | None:
    """When the recipient's quiet hours end, if `at` falls inside them and the severity does not break through."""
    quiet = recipient.quiet_hours
    if quiet is None or severity_rank(severity_name(severity)) >= severity_rank(quiet.except_severity):
        return None
    zone = _zone(recipient.timezone)
    local = at.astimezone(zone)
    start_t, end_t = _clock(quiet.start), _clock(quiet.end)
    for offset in (-1, 0):
        day = local.date() + timedelta(days=offset)
        start = datetime.combine(day, start_t, tzinfo=zone)
        end = datetime.combine(day + timedelta(days=1) if end_t <= start_t else day, end_t, tzinfo=zone)
        if start <= local < end:
            return end.astimezone(UTC)
    return None


def resolve_targets(config: RoutingConfig, level: Level, at: datetime) -> list[str]:
    """The recipients a level names at `at`, each once, schedules resolved to who is on call then."""
    people: list[str] = []
    for target in level.notify:
        names = on_call(config.schedules[target.removeprefix(SCHEDULE_PREFIX)], at).people if target.startswith(SCHEDULE_PREFIX) else [target]
        people += [p for p in names if p not in people]
    return people


Location = tuple[str | int, ...]


def _where(location: Location) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")
    return text or "(top level)"


def _is_secret_field(location: Location) -> bool:
    """recipients.<name>.contacts[<n>].url or .secret"""
    return (len(location) == 5 and location[0] == "recipients" and location[2] == "contacts" and isinstance(location[3], int)
            and location[4] in SECRET_FIELDS)


def _expand_secret(value: str, where: str, prefix: str) -> str:
    """A secret field's `${NAME}`s from the environment; NAME must have the allowed prefix. No message shows a value."""
    for name in _ENV_REFERENCE.findall(value):
        if not name.startswith(prefix):
            raise RoutingError(f"{where}: ${{{name}}} is not allowed: placeholders may only name environment variables starting with {prefix} "
                               "(the notifier setting notifier_secret_env_prefix), so that the routing file cannot read the notifier's own secrets")
        if name not in os.environ:
            raise RoutingError(f"{where}: environment variable {name} is not set (referenced as ${{{name}}})")
    return _ENV_REFERENCE.sub(lambda match: os.environ[match.group(1)], value)


def _refuse_placeholder(text: str, location: Location, source: str, prefix: str) -> None:
    if names := _ENV_REFERENCE.findall(text):
        raise RoutingError(f"{source}: {_where(location)}: ${{{names[0]}}}: placeholders are read only in a contact's url or secret "
                           f"(recipients.<name>.contacts[<n>].url or .secret), and only from environment variables starting with {prefix}")


def _expand_env(value: Any, location: Location, source: str, prefix: str) -> Any:
    """`value` with the placeholders of its contacts' secret fields expanded; one anywhere else is refused."""
    if isinstance(value, str):
        if _is_secret_field(location):
            return _expand_secret(value, f"{source}: {_where(location)}", prefix)
        _refuse_placeholder(value, location, source, prefix)
        return value
    if isinstance(value, dict):
        for key in value:
            _refuse_placeholder(str(key), (*location, str(key)), source, prefix)
        return {key: _expand_env(item, (*location, str(key)), source, prefix) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_env(item, (*location, index), source, prefix) for index, item in enumerate(value)]
    return value


def parse_routing(raw: Any, source: str = "routing", secret_env_prefix: str = DEFAULT_SECRET_ENV_PREFIX) -> RoutingConfig:
    """The routing file's content, checked; `${NAME}` placeholders read as the module's docstring says."""
    if not isinstance(raw, dict):
        raise RoutingError(f"{source}: expected a mapping at the top level")
    if not secret_env_prefix:
        raise RoutingError(f"{source}: no prefix for the environment variables that placeholders may name")
    try:
        return RoutingConfig.model_validate(_expand_env(raw, (), source, secret_env_prefix))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise RoutingError(f"{source}: {where}: {first['msg']}" + (f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else "")) from None


def load_routing(path: Path | str, secret_env_prefix: str = DEFAULT_SECRET_ENV_PREFIX) -> RoutingConfig:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RoutingError(f"{path}: cannot read the routing file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RoutingError(f"{path}: not valid YAML: {yaml_problem(exc)}") from None
    return parse_routing(raw, str(path), secret_env_prefix)

