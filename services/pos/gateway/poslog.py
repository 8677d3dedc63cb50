"""ARTS POSLog (NRF IXRetail) XML, as POS vendors write their transaction logs.

The body is parsed while it arrives, one `<Transaction>` at a time: each is mapped and dropped
before the next, so a day's log of many thousands of transactions never becomes one tree in memory.
Only what is read is built: a Transaction's ARTS elements (at most MAX_TRANSACTION_ELEMENTS, nested
at most MAX_DEPTH below it), never vendor extensions nor anything outside a Transaction (nested at
most MAX_DEPTH below the root), so one huge Transaction or wrapper is a 422, not a tree of it.
defusedxml's parser refuses DTDs, entity declarations and external references, so a "billion
laughs" or an XXE document is a 422, never an expansion or a file read.

Only ARTS elements and attributes are read: the IXRetail namespace (declared as the default or with
any prefix) or none at all. Vendor extensions (NCR's `acs:`, anyone's own namespace) are passed over.

Mapping (one transaction may give several events; each event id is a hash of RetailStoreID,
WorkstationID, BusinessDayDate, SequenceNumber and the event's kind, so a file sent again is
published once):
- `RetailTransaction` with `Sale` lines -> sale; with `Return` lines -> return (an exchange gives
  both). A return's `TransactionLink` names the original sale; a return without one (no receipt)
  has no original. Voided lines (`VoidFlag`) are left out.
- Cancelled before tender (`CancelFlag`, `TransactionStatus` Cancelled/Voided) -> void.
- A post-void (`TransactionStatus="PostVoided"`, a `TransactionLink` whose ReasonCode is a void, or
  a `ControlTransaction` with `PostVoid`/`VoidTransaction`) -> void with `after_tender` and the
  voided transaction as `original_transaction_id`.
- `ControlTransaction` with `NoSale` -> no_sale. Sign-ons, till counts, training-mode and suspended
  transactions are answered as skipped, with the reason.

`transaction_id` is `WorkstationID:BusinessDayDate:SequenceNumber`, the same triple a
`TransactionLink` carries, so a return or post-void names its sale exactly as the sale names
itself (a bare SequenceNumber repeats across the tills of a store). Money is read as written with
`decimal.Decimal`; totals must be exact in the currency's minor unit.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from xml.etree.ElementTree import Element, TreeBuilder
from zoneinfo import ZoneInfo

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from pydantic import ValidationError

from services.pos.gateway.base import Auth, Note, Parsed, PosInputError, Problem, decimal_of, minor_digits, to_minor
from services.pos.gateway.canonical import PosEventIn, validation_problems
from services.shared.storeconfig import Store, StoreConfig

ARTS_NAMESPACE = "http://www.nrf-arts.org/IXRetail/namespace/"
XML_TYPES = ("application/xml", "text/xml")
MAX_PROBLEMS = 100
# An ARTS line is some 10 to 25 elements and an event holds at most 1000 items: a real Transaction
# stays well under this, and a tree of this many elements is a few MB.
MAX_TRANSACTION_ELEMENTS = 25_000
# ARTS nests some ten levels below a Transaction (LineItem/Sale/POSIdentity/POSItemID, taxes, links).
MAX_DEPTH = 32
_MAX_ID = 48
_VOID_REASONS = {"void", "voided", "postvoid", "postvoided", "post-void", "transactionvoid"}
_SUSPENDED = {"Suspended", "SuspendedDeleted", "InProcess"}
_CANCELLED = {"Cancelled", "Canceled", "Voided"}
_TRUE = {"true", "1", "yes"}
_NAMES = {"store_id": "RetailStoreID", "register_id": "WorkstationID", "event_time": "EndDateTime"}


def _arts_name(tag: object) -> str | None:
    """The local name of an ARTS element (IXRetail namespace or none); None for a vendor's own."""
    if not isinstance(tag, str):
        return None
    if tag.startswith("{"):
        namespace, _, local = tag[1:].partition("}")
        return local if namespace.rstrip("/") == ARTS_NAMESPACE.rstrip("/") else None
    return tag


def _child(elem: Element | None, name: str) -> Element | None:
    if elem is None:
        return None
    return next((c for c in elem if _arts_name(c.tag) == name), None)


def _children(elem: Element, name: str) -> list[Element]:
    return [c for c in elem if _arts_name(c.tag) == name]


def _text(elem: Element | None, name: str) -> str:
    child = _child(elem, name)
    return (child.text or "").strip() if child is not None else ""


def _attr(elem: Element | None, name: str) -> str:
    """An ARTS attribute (unqualified), or the same name written as a child element."""
    if elem is None:
        return ""
    return (elem.get(name) or _text(elem, name)).strip()


def _flag(elem: Element | None, name: str) -> bool:
    return _attr(elem, name).lower() in _TRUE


@dataclass(frozen=True)
class _Link:
    """A TransactionLink: the transaction this one returns from or voids."""

    reason: str
    transaction_id: str


@dataclass
class _Line:
    sku: str
    description: str
    quantity: int
    unit_price_minor: int
    extended_minor: int

    def item(self) -> dict:
        return {"sku": self.sku, "description": self.description, "quantity": self.quantity, "unit_price_minor": self.unit_price_minor}


class _Transaction:
    """One `<Transaction>` mapped to canonical events, or to the problems that stop it."""

    def __init__(self, elem: Element, index: int, config: StoreConfig) -> None:
        self.elem, self.index, self.config = elem, index, config
        self.problems: list[Problem] = []
        self.notes: list[Note] = []

    def fail(self, path: tuple[str | int, ...], msg: str) -> None:
        self.problems.append(Problem(("body", "Transaction", self.index, *path), msg, self.index))

    def _id(self, name: str, text: str) -> str:
        if not text:
            self.fail((name,), f"{name} is missing")
        elif len(text) > _MAX_ID:
            self.fail((name,), f"{name} is longer than {_MAX_ID} characters")
        return text

    def events(self) -> list[Parsed]:
        tx = self.elem
        if _flag(tx, "TrainingModeFlag"):
            self.notes.append(Note("training-mode transaction: not a real sale", self.index, _text(tx, "SequenceNumber")))
            return []
        retail_store = self._id("RetailStoreID", _text(tx, "RetailStoreID"))
        workstation = self._id("WorkstationID", _text(tx, "WorkstationID"))
        sequence_field = "SequenceNumber" if _text(tx, "SequenceNumber") or not _text(tx, "TransactionID") else "TransactionID"
        sequence = self._id(sequence_field, _text(tx, sequence_field))
        store = self.config.store_for_pos(retail_store_id=retail_store) if retail_store else None
        register = ""
        if retail_store and store is None:
            self.fail(("RetailStoreID",), f"unknown store {retail_store!r}: neither a store id nor a pos.retail_store_id of the store config")
        if store is not None and workstation:
            register = store.pos.workstations.get(workstation, workstation)
            if not any(r.id == register for r in store.registers):
                self.fail(("WorkstationID",), f"unknown register {workstation!r} in store {store.id} (not a register id, nor in its pos.workstations)")
        when = self._time(store)
        day = self._business_day(when)
        currency = _text(tx, "CurrencyCode").upper()
        if currency and not re.fullmatch(r"[A-Z]{3}", currency):
            self.fail(("CurrencyCode",), f"{currency[:20]!r} is not an ISO 4217 currency code")
            currency = ""
        employee = _text(tx, "OperatorID")
        if len(employee) > 128:
            self.fail(("OperatorID",), "OperatorID is longer than 128 characters")
        if self.problems or store is None or when is None or day is None:
            return []
        own_id = self.transaction_id(workstation, day, sequence)
        common = {"store_id": store.id, "register_id": register, "event_time": when, "employee_id": employee, "currency": currency, "transaction_id": own_id}
        key = (retail_store, workstation, day, sequence)
        retail, control = _child(tx, "RetailTransaction"), _child(tx, "ControlTransaction")
        if retail is not None:
            specs = self._retail(retail, currency, own_id)
        elif control is not None:
            specs = self._control(control, currency)
        else:
            body = next((_arts_name(c.tag) for c in tx if (_arts_name(c.tag) or "").endswith("Transaction")), None)
            self.notes.append(Note(f"a {body or 'transaction without a RetailTransaction or ControlTransaction'} carries no POS event", self.index, sequence))
            return []
        parsed = []
        for spec in specs:
            event_id = "poslog-" + hashlib.sha256("|".join((*key, spec["type"])).encode()).hexdigest()[:32]
            try:
                event = PosEventIn.model_validate({**common, **spec, "event_id": event_id})
            except ValidationError as exc:
                self.problems += validation_problems(exc, ("body", "Transaction", self.index))
                continue
            parsed.append(Parsed(event, ("body", "Transaction", self.index), self.index, _NAMES))
        return [] if self.problems else parsed

    @staticmethod
    def transaction_id(workstation: str, day: str, sequence: str) -> str:
        return f"{workstation}:{day}:{sequence}"

    def _time(self, store: Store | None) -> datetime | None:
        name = "EndDateTime" if _text(self.elem, "EndDateTime") else "BeginDateTime"
        text = _text(self.elem, name)
        if not text:
            self.fail(("EndDateTime",), "EndDateTime (or BeginDateTime) is missing")
            return None
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            self.fail((name,), f"{text[:40]!r} is not an xs:dateTime")
            return None
        if when.tzinfo is None:
            if store is None:
                return None
            # POS clocks often write local time without an offset: the store's own time zone.
            when = when.replace(tzinfo=ZoneInfo(store.timezone))
        return when

    def _business_day(self, when: datetime | None) -> str | None:
        text = _text(self.elem, "BusinessDayDate")
        if not text:
            return when.date().isoformat() if when is not None else None
        try:
            return date.fromisoformat(text[:10]).isoformat()
        except ValueError:
            self.fail(("BusinessDayDate",), f"{text[:40]!r} is not an xs:date")
            return None

    def _link(self, elem: Element | None) -> _Link | None:
        link = _child(elem, "TransactionLink")
        if link is None:
            return None
        workstation, sequence = _text(link, "WorkstationID"), _text(link, "SequenceNumber") or _text(link, "TransactionID")
        day = _text(link, "BusinessDayDate")[:10]
        if not day:
            stamp = _text(link, "EndDateTime") or _text(link, "BeginDateTime")
            day = stamp[:10]
        if not workstation or not sequence or len(workstation) > _MAX_ID or len(sequence) > _MAX_ID or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            self.fail(("TransactionLink",), "a TransactionLink needs WorkstationID, SequenceNumber and BusinessDayDate")
            return None
        return _Link(_attr(link, "ReasonCode"), self.transaction_id(workstation, day, sequence))

    def _amount(self, elem: Element, name: str, currency: str, path: tuple[str | int, ...], exact: bool = True) -> int | None:
        """Minor units of an amount element; None when absent. Unit prices (which may carry more
        digits, such as a price per kilogram) are rounded half to even; totals must be exact."""
        text = _text(elem, name)
        if not text:
            return None
        value = decimal_of(text)
        if value is None:
            self.fail((*path, name), f"{text[:40]!r} is not a decimal amount")
            return None
        if not exact:
            value = value.quantize(Decimal(1).scaleb(-minor_digits(currency)), rounding=ROUND_HALF_EVEN) if value.adjusted() <= 15 else value
        minor = to_minor(value, currency)
        if minor is None:
            self.fail((*path, name), f"{text[:40]!r} is not an exact amount in {currency or 'the currency'}'s minor unit")
        return minor

    def _line(self, line: Element, number: int, kind: str, currency: str) -> _Line | None:
        path: tuple[str | int, ...] = ("LineItem", number, kind)
        known_problems = len(self.problems)
        sku = _text(line, "ItemID") or _text(_child(line, "POSIdentity"), "POSItemID") or f"line-{number + 1}"
        quantity_text = _text(line, "Quantity") or "1"
        quantity = decimal_of(quantity_text)
        if quantity is None or quantity == 0 or abs(quantity) > 10_000:
            self.fail((*path, "Quantity"), f"{quantity_text[:40]!r} is not a quantity (non-zero, at most 10000)")
            return None
        extended = self._amount(line, "ExtendedAmount", currency, path)
        unit = next((p for p in (self._amount(line, name, currency, path, exact=False)
                                 for name in ("ActualSalesUnitPrice", "RegularSalesUnitPrice", "UnitListPrice")) if p is not None), None)
        if quantity == quantity.to_integral_value():
            count = int(quantity)
            if unit is None and extended is not None:
                unit = round(Decimal(abs(extended)) / abs(count))
            if extended is None and unit is not None:
                extended = unit * count
        else:
            # A weighed item: one line of its extended amount (the quantity is not a count).
            count, unit = 1, abs(extended) if extended is not None else None
        if unit is None or extended is None:
            if len(self.problems) == known_problems:
                self.fail(path, "a line needs ExtendedAmount or a unit price")
            return None
        if kind == "Return":
            count, extended = abs(count), abs(extended)
        return _Line(sku[:64], _text(line, "Description")[:256], count, abs(unit), extended)

    def _retail(self, retail: Element, currency: str, own_id: str) -> list[dict]:
        sales: list[_Line] = []
        returns: list[_Line] = []
        tenders: list[str] = []
        return_links: list[_Link] = []
        for number, line in enumerate(_children(retail, "LineItem")):
            if _flag(line, "VoidFlag"):
                continue
            for kind, into in (("Sale", sales), ("Return", returns)):
                part = _child(line, kind)
                if part is None:
                    continue
                parsed = self._line(part, number, kind, currency)
                if parsed is not None:
                    into.append(parsed)
                link = (self._link(part) or self._link(line)) if kind == "Return" else None
                if link is not None:
                    return_links.append(link)
            tendered = _child(line, "Tender")
            if tendered is not None:
                name = tendered.get("TenderType") or _text(tendered, "TenderType") or "tender"
                if name not in tenders:
                    tenders.append(name)
        grand: int | None = None
        for amount in _children(retail, "Total"):
            if amount.get("TotalType") in ("TransactionGrandAmount", "TransactionNetAmount") and grand is None:
                grand = self._total(amount, currency)
        if self.problems:
            return []
        status = _attr(retail, "TransactionStatus")
        link = self._link(retail)
        tender = "+".join(tenders)[:32]
        all_lines = sales + returns
        line_total = sum(line.extended_minor for line in sales) - sum(line.extended_minor for line in returns)
        if status == "PostVoided" or (link is not None and link.reason.lower() in _VOID_REASONS):
            voided = link.transaction_id if link is not None else own_id
            return [{"type": "void", "after_tender": True, "original_transaction_id": voided, "items": [line.item() for line in all_lines],
                     "total_minor": abs(grand if grand is not None else line_total), "tender": tender}]
        if _flag(self.elem, "CancelFlag") or _flag(retail, "CancelFlag") or status in _CANCELLED:
            return [{"type": "void", "items": [line.item() for line in all_lines], "total_minor": abs(grand if grand is not None else line_total), "tender": tender}]
        if status in _SUSPENDED:
            self.notes.append(Note(f"transaction status {status}: not finished", self.index, own_id))
            return []
        specs: list[dict] = []
        if sales:
            total = grand if grand is not None and not returns else sum(line.extended_minor for line in sales)
            specs.append({"type": "sale", "items": [line.item() for line in sales], "total_minor": total, "tender": tender})
        if returns:
            refunded = abs(grand) if grand is not None and not sales else sum(line.extended_minor for line in returns)
            original = return_links[0].transaction_id if return_links else (link.transaction_id if link is not None else "")
            specs.append({"type": "return", "items": [line.item() for line in returns], "total_minor": refunded, "tender": tender,
                          "original_transaction_id": original})
        if not specs:
            self.notes.append(Note("no Sale or Return line: no POS event", self.index, own_id))
        return specs

    def _total(self, total: Element, currency: str) -> int | None:
        text = (total.text or "").strip()
        value = decimal_of(text)
        minor = to_minor(value, currency) if value is not None else None
        if minor is None:
            self.fail(("Total",), f"{text[:40]!r} is not an exact amount in {currency or 'the currency'}'s minor unit")
        return minor

    def _control(self, control: Element, currency: str) -> list[dict]:
        if _child(control, "NoSale") is not None:
            return [{"type": "no_sale"}]
        post_void = _child(control, "PostVoid") or _child(control, "VoidTransaction")
        link = self._link(post_void) if post_void is not None else None
        link = link or self._link(control)
        if post_void is not None or (link is not None and link.reason.lower() in _VOID_REASONS):
            if link is None:
                if not self.problems:
                    self.fail(("ControlTransaction", "TransactionLink"), "a post-void names the voided transaction in a TransactionLink")
                return []
            amount = None
            for holder in (post_void, control):
                for total in _children(holder, "Total") if holder is not None else []:
                    amount = amount if amount is not None else self._total(total, currency)
            return [{"type": "void", "after_tender": True, "original_transaction_id": link.transaction_id, "total_minor": abs(amount or 0)}]
        what = next((_arts_name(c.tag) for c in control if _arts_name(c.tag) not in (None, "ReasonCode")), "ControlTransaction")
        self.notes.append(Note(f"a ControlTransaction ({what}) carries no POS event", self.index))
        return []


class _Target:
    """The parser's target: builds the tree of one Transaction at a time, hands it over when it
    ends and drops it from the root, so memory holds one transaction, not the file. What is never
    read (vendor extensions, anything outside a Transaction) is not built at all, and a Transaction
    too large or anything nested too deep stops the parse with a 422 naming the limit."""

    def __init__(self, on_transaction: Callable[[Element], None], max_elements: int = MAX_TRANSACTION_ELEMENTS, max_depth: int = MAX_DEPTH) -> None:
        self.builder = TreeBuilder()
        self.on_transaction = on_transaction
        self.max_elements, self.max_depth = max_elements, max_depth
        self.depth = 0
        self.root: Element | None = None
        self.root_name: str | None = None
        self.transactions = 0  # begun: the one open is number transactions - 1
        self.tx_depth = 0  # the open Transaction's depth; 0 outside one
        self.tx_elements = 0
        self.skip_depth = 0  # the depth of the element whose subtree is not built; 0 when building
        self.after_skip = False  # text after a skipped element is its tail: not built either

    def _refuse(self, what: str) -> PosInputError:
        if self.tx_depth:
            index = self.transactions - 1
            return PosInputError(422, [Problem(("body", "Transaction", index), f"Transaction {index} {what}", index)])
        return PosInputError(422, [Problem(("body",), f"an element outside any Transaction {what}")])

    def _begin_transaction(self) -> None:
        self.transactions += 1
        self.tx_depth, self.tx_elements = self.depth, 0

    def start(self, tag: str, attrib: dict[str, str]) -> Element | None:
        self.depth += 1
        if self.root is None:
            elem = self.builder.start(tag, attrib)
            self.root, self.root_name = elem, _arts_name(tag)
            if self.root_name not in ("POSLog", "Transaction"):
                raise PosInputError(422, [Problem(("body",), f"the root element is {tag[:100]!r}; expected an ARTS POSLog (namespace {ARTS_NAMESPACE})")])
            if self.root_name == "Transaction":
                self._begin_transaction()
                self.tx_elements = 1
            return elem
        below = self.depth - (self.tx_depth or 1)
        if below > self.max_depth:
            raise self._refuse(f"nests elements more than {self.max_depth} levels deep (the limit)" if self.tx_depth
                               else f"is nested more than {self.max_depth} levels deep (the limit)")
        if self.skip_depth:
            return None
        name = _arts_name(tag)
        if not self.tx_depth:
            # Only a Transaction directly under the root is read; a wrapper, or anything else, is passed over.
            if self.depth != 2 or name != "Transaction":
                self.skip_depth = self.depth
                return None
            self._begin_transaction()
        elif name is None:
            self.skip_depth = self.depth  # a vendor's extension: never read
            return None
        self.tx_elements += 1
        if self.tx_elements > self.max_elements:
            raise self._refuse(f"has more than {self.max_elements} elements (the limit per Transaction)")
        self.after_skip = False
        return self.builder.start(tag, attrib)

    def end(self, tag: str) -> Element | None:
        depth = self.depth
        self.depth -= 1
        if self.skip_depth:
            if depth == self.skip_depth:
                self.skip_depth, self.after_skip = 0, True
            return None
        self.after_skip = False
        elem = self.builder.end(tag)
        if depth == self.tx_depth:
            self.tx_depth = 0
            self.on_transaction(elem)
            if self.root is not None and elem is not self.root:
                self.root.remove(elem)
        return elem

    def data(self, data: str) -> None:
        # Text is read only inside a Transaction, and never an ignored element's text or tail.
        if self.tx_depth and not self.skip_depth and not self.after_skip:
            self.builder.data(data)

    def close(self) -> Element:
        return self.builder.close()


class _PosLogParse:
    def __init__(self, config: StoreConfig, max_elements: int = MAX_TRANSACTION_ELEMENTS, max_depth: int = MAX_DEPTH) -> None:
        self.config = config
        self.notes: list[Note] = []
        self.problems: list[Problem] = []
        self.transactions = 0
        self._ready: list[Parsed] = []
        target = _Target(self._transaction, max_elements, max_depth)
        self._parser = DefusedXMLParser(target=target, forbid_dtd=True, forbid_entities=True, forbid_external=True)

    def _transaction(self, elem: Element) -> None:
        index = self.transactions
        self.transactions += 1
        tx = _Transaction(elem, index, self.config)
        events = tx.events()
        self.notes += tx.notes
        self.problems += tx.problems
        if not self.problems:
            self._ready += events
        if len(self.problems) > MAX_PROBLEMS:
            self._raise()

    def _raise(self) -> None:
        shown = self.problems[:MAX_PROBLEMS]
        if len(self.problems) > MAX_PROBLEMS:
            shown.append(Problem(("body",), f"and more: stopped at transaction {self.transactions - 1} after {MAX_PROBLEMS} problems"))
        raise PosInputError(422, shown)

    def _run(self, step: Callable[[], object]) -> list[Parsed]:
        try:
            step()
        except PosInputError as exc:
            # A limit reached: with the problems of the transactions before it, as any 422 of a file.
            if exc.status == 422 and self.problems:
                raise PosInputError(422, [*self.problems[:MAX_PROBLEMS], *exc.problems]) from None
            raise
        except DefusedXmlException as exc:
            raise PosInputError(422, [Problem(("body",), f"refused: {type(exc).__name__} (DTDs, entity declarations and external references are not accepted)")]) from None
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            raise PosInputError(422, [Problem(("body",), f"not well-formed XML: {str(exc)[:200]}")]) from None
        ready, self._ready = self._ready, []
        return ready

    def feed(self, chunk: bytes) -> list[Parsed]:
        return self._run(lambda: self._parser.feed(chunk))

    def close(self) -> list[Parsed]:
        ready = self._run(self._parser.close)
        if self.problems:
            self._raise()
        if self.transactions == 0:
            raise PosInputError(422, [Problem(("body",), "no Transaction in the POSLog")])
        return ready


class PosLogAdapter:
    """POST /v1/pos/poslog: a POSLog document (one Transaction or a whole log), parsed as it streams."""

    source = "poslog"
    auth: Auth = "key"
    content_types: tuple[str, ...] = XML_TYPES

    def __init__(self, config: StoreConfig) -> None:
        self.config = config

    def begin(self, headers: Mapping[str, str]) -> _PosLogParse:
        return _PosLogParse(self.config)

