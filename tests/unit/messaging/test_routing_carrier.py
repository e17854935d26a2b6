"""RoutingCarrier over fake carriers: split and merge, failover only on CarrierDown, pins after an unknown
outcome, health snapshot and its log lines (no numbers in them)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from services.messaging.adapters.carriers import CarrierDown, CarrierUnavailable
from services.messaging.adapters.routing import DOWN, NO_ANSWER, UP, RoutingCarrier
from services.messaging.domain.delivery import Receipt, Submission, SubmitResult
from services.messaging.domain.routes import parse_routes
from services.messaging.domain.statuses import MessageStatus
from services.messaging.service.ports import ReceiptHandler

AU, GB = "+61412345678", "+447400123456"


class Fake:
    def __init__(self, name: str) -> None:
        self.name = name
        self.fail: Exception | None = None
        self.got: list[str] = []
        self.receipts: list[Receipt] = []

    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        if self.fail is not None:
            raise self.fail
        self.got += [s.message_id for s in batch]
        return [SubmitResult(s.message_id, accepted=True, carrier_ref=f"{self.name}-{s.message_id}") for s in batch]

    async def pump_receipts(self, handle: ReceiptHandler, limit: int) -> int:
        due, self.receipts = self.receipts, []
        if due:
            await handle(due)
        return len(due)


def _router(fallback: str = "sim") -> tuple[RoutingCarrier, Fake, Fake]:
    a, b = Fake("smpp"), Fake("sim")
    return RoutingCarrier(parse_routes("AU=smpp;*=sim", fallback), {"smpp": a, "sim": b}), a, b


def _subs(*pairs: tuple[str, str]) -> list[Submission]:
    return [Submission(mid, to, "hello", "SendSafe", 1) for mid, to in pairs]


async def test_split_by_route_and_merge_with_the_carrier_named() -> None:
    r, a, b = _router()
    res = await r.submit(_subs(("m1", AU), ("m2", GB), ("m3", AU)))
    assert a.got == ["m1", "m3"] and b.got == ["m2"]
    assert {x.message_id: (x.carrier, x.carrier_ref) for x in res} == {
        "m1": ("smpp", "smpp-m1"), "m2": ("sim", "sim-m2"), "m3": ("smpp", "smpp-m3")}
    assert r.health()["smpp"].state == UP and r.health()["smpp"].accepted == 2


async def test_down_fails_over_once(caplog: pytest.LogCaptureFixture) -> None:
    r, a, b = _router()
    a.fail = CarrierDown("not bound")
    with caplog.at_level(logging.INFO, logger="services.messaging.adapters.routing"):
        res = await r.submit(_subs(("m1", AU), ("m2", GB)))
        await r.submit(_subs(("m3", AU)))
        assert a.got == [] and sorted(b.got) == ["m1", "m2", "m3"]
        a.fail = None
        await r.submit(_subs(("m4", AU)))
    assert {x.message_id: x.carrier for x in res} == {"m1": "sim", "m2": "sim"}
    h = r.health()
    assert h["smpp"].failed_over == 2 and h["sim"].fallback_taken == 2 and h["smpp"].refused_down == 2
    downs = [m for m in caplog.messages if "is down" in m]
    assert downs == ["carrier smpp is down (CarrierDown): none of its batch was taken; "
                     "fallback carrier sim takes its routes"]  # logged once: state changes only
    assert a.got == ["m4"] and r.health()["smpp"].state == UP
    assert "carrier smpp is up again" in caplog.messages
    assert not any("+61" in m or "hello" in m for m in caplog.messages)


async def test_unknown_outcome_is_not_failed_over_and_pins_the_message() -> None:
    r, a, b = _router()
    a.fail = CarrierUnavailable("timeout")
    with pytest.raises(CarrierUnavailable):  # the whole batch had one route: raised as from one carrier
        await r.submit(_subs(("m1", AU)))
    assert b.got == [] and r.health()["smpp"].state == NO_ANSWER
    # Now it is down: m1 may already be at the phone, so it waits for smpp; m2 fails over.
    a.fail = CarrierDown("not bound")
    res = await r.submit(_subs(("m1", AU), ("m2", AU), ("m3", GB)))
    assert b.got == ["m3", "m2"] or b.got == ["m2", "m3"]
    assert {x.message_id for x in res} == {"m2", "m3"}  # m1 unanswered: retried with backoff
    a.fail = None
    await r.submit(_subs(("m1", AU)))
    assert a.got == ["m1"]
    a.fail = CarrierDown("not bound")  # answered: the pin is gone, m1 could fail over now
    await r.submit(_subs(("m1", AU)))
    assert b.got.count("m1") == 1


async def test_partial_failure_keeps_the_other_carriers_answers() -> None:
    r, a, b = _router(fallback="")
    a.fail = CarrierDown("not bound")
    res = await r.submit(_subs(("m1", AU), ("m2", GB)))
    assert [x.message_id for x in res] == ["m2"] and b.got == ["m2"]
    with pytest.raises(CarrierDown):
        await r.submit(_subs(("m1", AU)))


async def test_fallback_down_too_raises() -> None:
    r, a, b = _router()
    a.fail, b.fail = CarrierDown("a"), CarrierDown("b")
    with pytest.raises(CarrierDown):
        await r.submit(_subs(("m1", AU), ("m2", GB)))
    assert r.health()["sim"].state == DOWN


async def test_receipts_pumped_from_every_carrier() -> None:
    r, a, b = _router()
    a.receipts = [Receipt("m1", MessageStatus.DELIVERED)]
    b.receipts = [Receipt("", MessageStatus.DELIVERED, carrier_ref="sim-m2")]
    got: list[Receipt] = []

    async def handle(rs: list[Receipt]) -> None:
        got.extend(rs)

    assert await r.pump_receipts(handle, 100) == 2
    assert {x.message_id or x.carrier_ref for x in got} == {"m1", "sim-m2"}
    assert await r.pump_receipts(handle, 100) == 0


def test_routes_must_name_configured_carriers() -> None:
    with pytest.raises(ValueError, match="not configured: smpp"):
        RoutingCarrier(parse_routes("AU=smpp;*=sim"), {"sim": Fake("sim")})
