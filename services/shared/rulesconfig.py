"""The correlator's rules as loss-prevention configures them: on/off, windows, thresholds.

Lives in the store config file: `rules:` at the chain's top level sets the defaults; a store's
`rules:` overrides them for that store, a register's for that register, a zone's for that zone
(loitering and concealment). Overrides name only what they change, for example
`rules: {loitering: {high_value_s: 60}}`; they are merged field by field and validated once when the
file is loaded, so a typo fails at start with its path.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True


class RefundWithoutCustomer(_Rule):
    """A refund or return while nobody stood in the register's customer zone."""

    before_s: float = Field(5.0, ge=0, le=600)
    after_s: float = Field(5.0, ge=0, le=600)
    # Refunds below this total (major currency units) are not alerted; feedback scales it.
    min_total: float = Field(0.0, ge=0)


class RefundWithoutMerchandise(_Rule):
    """A refund or return while no newly arrived object lay in the counter's merchandise zone."""

    # Goods are usually put on the counter well before the refund is keyed in.
    before_s: float = Field(120.0, ge=0, le=1800)
    after_s: float = Field(10.0, ge=0, le=600)
    min_total: float = Field(0.0, ge=0)


class Concealment(_Rule):
    """In a high_value zone: hands to waist, pockets or a bag after reaching the shelf, or a
    sustained anomaly where a person is; one alert per person and visit."""

    # Pose cue in at least k of the person's last n frames in the zone.
    pose_k: int = Field(3, ge=1, le=100)
    pose_n: int = Field(8, ge=1, le=100)
    # A wrist this close to a hip or a bag counts, in torso lengths (shoulder to hip).
    hand_reach: float = Field(0.35, gt=0, le=2)
    # Zone anomaly above `anomaly_level` (1.0 = the camera's calibrated normal level) in k of n frames.
    anomaly_k: int = Field(6, ge=1, le=100)
    anomaly_n: int = Field(10, ge=1, le=100)
    anomaly_level: float = Field(1.5, gt=0)
    min_keypoint_score: float = Field(0.3, ge=0, le=1)

    @model_validator(mode="after")
    def _k_of_n(self) -> Concealment:
        for k, n, name in ((self.pose_k, self.pose_n, "pose"), (self.anomaly_k, self.anomaly_n, "anomaly")):
            if k > n:
                raise ValueError(f"{name}_k {k} is above {name}_n {n}")
        return self


class AfterHours(_Rule):
    """A person in the store outside opening hours (store time zone, holidays closed all day)."""

    # A track must last this long, so one false detection at night pages nobody.
    min_track_s: float = Field(3.0, ge=0, le=600)


class Loitering(_Rule):
    """A person staying in a high_value or exit zone beyond a limit; once per visit.

    Three limits per zone kind, the first one passed raises: plain (dwell since entering the zone),
    alone (time since nobody else has been in the zone with the person) and cue (time since the
    person showed a concealment cue on this camera: reached out, then a hand at waist, pocket or in a
    bag, as the concealment rule sees it, in two frames of the visit). Browsing takes minutes; lingering alone
    at a fixture, or after a hand went to a pocket, is the signal (docs/rules.md, "Defaults and why").
    """

    # Comparing phones, perfumes or spirits takes minutes (a simulated busy day: median 150 s, 5% over
    # 6 min); a quarter of an hour is past that tail, which at 10 min still paged about once a store-day.
    high_value_s: float = Field(900.0, gt=0, le=86400)
    # Nobody else in the zone (no shopper, no staff) to see what happens: ten minutes alone with the stock.
    high_value_alone_s: float = Field(600.0, gt=0, le=86400)
    # After reach-then-hand-at-hip or hand-in-bag: staying on is waiting for the moment to leave with
    # it. A single such gesture is often a phone or a wallet, so five more minutes, not one.
    high_value_cue_s: float = Field(300.0, gt=0, le=86400)
    # People wait at the doors for a companion, a ride or the rain to stop.
    exit_s: float = Field(180.0, gt=0, le=86400)
    # Alone at the doors (no greeter, nobody passing): watching for an unguarded moment to walk out.
    exit_alone_s: float = Field(120.0, gt=0, le=86400)
    # A person who showed a concealment cue on this camera, now waiting at the exit: page before they leave.
    exit_cue_s: float = Field(20.0, gt=0, le=86400)


class ReturnAbuse(_Rule):
    """The same hashed card or customer token returning in many stores or many times (chain-wide).

    Two sliding windows: the slow one (`period_days`) finds the serial returner, the fast one
    (`fast_period_h`) a card taken round the chain's stores in a day or two. One alert per token per
    `period_days`, whichever window finds it first, so the two never alert on the same returns.
    """

    # The slow window: a month, the span over which serial returning shows against normal returning.
    period_days: float = Field(30.0, gt=0, le=365)
    # A customer uses two or three stores of a chain (home, work, town centre); five in a month is a round.
    min_stores: int = Field(5, ge=2, le=1000)
    # Eight returns in a month is two a week, every week: several times what any ordinary customer returns.
    min_returns: int = Field(8, ge=2, le=10000)
    # The fast window, in hours (0: off): three stores inside two days is a run through the chain
    # before the stores compare notes. Returns at one store count only in the slow window (one trip
    # with several gift receipts is several returns).
    fast_period_h: float = Field(48.0, ge=0, le=24 * 365)
    fast_min_stores: int = Field(3, ge=2, le=1000)


class EmployeeOwnCard(_Rule):
    """A refund to a card or customer token of the employee who keyed it in."""


class EmployeeOwnSale(_Rule):
    """A refund keyed in by the employee who rang up the original sale."""

    # Refunds of sales older than this are not judged (the sale is history, not a set-up).
    sale_retention_days: float = Field(90.0, gt=0, le=400)


class NoSaleRate(_Rule):
    """Drawer opened without a sale (no_sale, drawer_open) too often by one employee at one register."""

    max_per_shift: int = Field(5, ge=1, le=1000)
    shift_h: float = Field(8.0, gt=0, le=24)


class PostVoid(_Rule):
    """A void after tender above an amount."""

    min_total: float = Field(50.0, ge=0)


class CheckoutBypass(_Rule):
    """A person who was in a high_value zone and then leaves the store (a door line crossed outwards,
    or an exit zone reached) without a counter_customer (till) zone in between, on one camera or
    across cameras whose views chain (the store's `handovers`). Staff (seen in a staff_only zone)
    are left out, and so is a visit where the camera's pose stage saw the person never reach out:
    nothing was taken from the shelf."""

    # Judge only visits where the pose stage saw the person reach to the shelf. Most shoppers who
    # look at a high-value shelf buy nothing and leave (a third to two thirds of visitors, by any
    # store's conversion rate): without the reach, every one of them is a page.
    needs_reach: bool = True

    # From the end of the high-value visit to the exit: a shop visit. Later than this, paying
    # elsewhere (another floor, a kiosk we do not watch) is as likely as walking out.
    within_s: float = Field(900.0, gt=0, le=7200)
    # A visit shorter than this is walking past the shelf, not picking from it.
    min_visit_s: float = Field(5.0, ge=0, le=600)
    # An exit is decided once every camera of the store has reported this far past it, so a till
    # visit that a slower camera reports late still counts.
    settle_s: float = Field(5.0, ge=0, le=120)


class RepeatVisits(_Rule):
    """The same person back at a high_value zone `min_visits` times within `within_s` (one track, or
    one person across cameras through `handovers`): casing a shelf. A reason that raises an
    incident's severity beside concealment or loitering of the same person."""

    # Intel's storewide loss-prevention design flags four or more returns to a high-value area.
    min_visits: int = Field(4, ge=2, le=100)
    within_s: float = Field(1800.0, gt=0, le=86400)
    # Coming back within this long continues the visit: a foot point jittering on the zone's edge,
    # or a step back to let someone pass, is not a new visit.
    rejoin_s: float = Field(20.0, ge=0, le=600)
    # Visits shorter than this (walking through the zone) do not count.
    min_visit_s: float = Field(3.0, ge=0, le=600)


class Timing(BaseModel):
    """Event-time tolerances."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # POS clocks drift from camera clocks: windows are widened by this much on each side.
    pos_clock_skew_s: float = Field(2.0, ge=0, le=300)
    # A refund whose camera stays silent this long (wall clock) is decided on what was covered.
    max_wait_s: float = Field(120.0, gt=0, le=3600)


class Tuning(BaseModel):
    """Feedback on sw.feedback.v1 scales each rule's threshold per store, within bounds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # A false alarm raises the store's factor by `step` (fewer alerts), a confirmation lowers it.
    step: float = Field(0.1, gt=0, le=1)
    min_factor: float = Field(0.5, gt=0, le=1)
    max_factor: float = Field(2.0, ge=1, le=10)


class RulesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    refund_without_customer: RefundWithoutCustomer = RefundWithoutCustomer()
    refund_without_merchandise: RefundWithoutMerchandise = RefundWithoutMerchandise()
    concealment: Concealment = Concealment()
    after_hours: AfterHours = AfterHours()
    loitering: Loitering = Loitering()
    return_abuse: ReturnAbuse = ReturnAbuse()
    employee_own_card: EmployeeOwnCard = EmployeeOwnCard()
    employee_own_sale: EmployeeOwnSale = EmployeeOwnSale()
    no_sale_rate: NoSaleRate = NoSaleRate()
    post_void: PostVoid = PostVoid()
    checkout_bypass: CheckoutBypass = CheckoutBypass()
    repeat_visits: RepeatVisits = RepeatVisits()
    timing: Timing = Timing()
    tuning: Tuning = Tuning()


# Rule names as they appear on alerts, metrics and feedback.
RULE_NAMES = tuple(name for name in RulesConfig.model_fields if name not in ("timing", "tuning"))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, sections merged field by field."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve(*layers: dict[str, Any]) -> RulesConfig:
    """The rules in force where these override layers apply (chain, store, register or zone)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = merge(merged, layer)
    return RulesConfig.model_validate(merged)
