"""`RoutingCarrier`: one Carrier over several named carriers, chosen per destination by a route table
(domain/routes.py), with a fallback carrier for a carrier that is down.

* A batch is split by route; each carrier gets its sub-batch (concurrently) and the answers are merged,
  each result naming the carrier that took the message (stored with it; receipts find a message by our
  id or its carrier reference, whichever carrier sent it).
* `CarrierDown` (the carrier took none of the sub-batch) sends the sub-batch to the fallback carrier: no
  message can reach the phone twice.
* `CarrierUnavailable` or any other error (outcome unknown: the carrier may have sent some) is never
  failed over. Those messages are retried with backoff as before, and pinned to that carrier until it
  answers for them, so a later failover cannot send them a second time through another carrier. If every
  sub-batch failed the error propagates as from a single carrier; otherwise the others' answers stand.
* Per-carrier health: state changes are logged (up / down / no answer / fallback taking over; never a
  number or a body), and `health()` is a snapshot the metrics work can read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from services.messaging.adapters.carriers import CarrierDown
from services.messaging.domain.delivery import Submission, SubmitResult
from services.messaging.domain.routes import RouteTable
from services.messaging.service.ports import Carrier, ReceiptHandler

_LOG = logging.getLogger(__name__)

UNKNOWN = "unknown"  # no answer yet since start-up
UP = "up"  # answered its last batch
DOWN = "down"  # refused its last batch untouched (CarrierDown)
NO_ANSWER = "no_answer"  # its last batch's outcome is unknown (CarrierUnavailable, other errors)


@dataclass(frozen=True, slots=True)
class CarrierHealth:
    """One carrier as the router last saw it. Counters count submissions (messages), not batches."""

    name: str
    state: str = UNKNOWN
    since: float = 0.0  # unix time of the last state change (0: never answered)
    submitted: int = 0  # messages handed to it (routed or as fallback)
    accepted: int = 0  # messages it accepted
    refused_down: int = 0  # messages it refused untouched (CarrierDown)
    unknown_outcome: int = 0  # messages whose outcome it left unknown
    fallback_taken: int = 0  # messages it took as the fallback of another carrier
    failed_over: int = 0  # messages of its routes the fallback took while it was down


class RoutingCarrier:
    name = "routed"

    def __init__(self, table: RouteTable, carriers: Mapping[str, Carrier], *, pin_limit: int = 100_000,
                 clock: Callable[[], float] = time.time) -> None:
        missing = sorted(table.carriers - set(carriers))
        if missing:
            raise ValueError(f"routes name carriers that are not configured: {', '.join(missing)}")
        self._table = table
        self._carriers = {name: carriers[name] for name in sorted(table.carriers)}
        self._health = {name: CarrierHealth(name) for name in self._carriers}
        self._pinned: OrderedDict[str, str] = OrderedDict()  # message id -> carrier with unknown outcome
        self._pin_limit = pin_limit
        self._clock = clock

    @property
    def carriers(self) -> Mapping[str, Carrier]:
        """The named carriers (for start-up and shutdown of those that hold connections)."""
        return dict(self._carriers)

    def health(self) -> dict[str, CarrierHealth]:
        """A snapshot per carrier name."""
        return dict(self._health)

    def route(self, sub: Submission) -> str:
        return self._pinned.get(sub.message_id) or self._table.carrier_for(sub.to)

    async def submit(self, batch: Sequence[Submission]) -> list[SubmitResult]:
        groups: dict[str, list[Submission]] = {}
        for sub in batch:
            groups.setdefault(self.route(sub), []).append(sub)
        names = list(groups)
        answers = await asyncio.gather(*(self._submit_routed(n, groups[n]) for n in names), return_exceptions=True)
        results: list[SubmitResult] = []
        errors: list[tuple[str, BaseException]] = []
        for name, answer in zip(names, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):  # cancellation, interpreter exit: not ours to hide
                    raise answer
                errors.append((name, answer))
            else:
                results.extend(answer)
        if errors and not results:
            raise errors[0][1]
        for name, exc in errors:  # the rest of the batch was answered: these are retried as usual
            _LOG.warning("carrier %s submit failed (%s); %d messages will be retried",
                         name, type(exc).__name__, len(groups[name]))
        return results

    async def _submit_routed(self, name: str, subs: list[Submission]) -> list[SubmitResult]:
        try:
            return await self._submit_to(name, subs)
        except CarrierDown:
            fallback = self._table.fallback_for(name)
            # A message pinned here may have been sent by an earlier try: it waits for this carrier (it is
            # left unanswered, so it is retried), the others fail over.
            movable = [s for s in subs if self._pinned.get(s.message_id) != name]
            if not fallback or not movable:
                raise
            self._count(name, failed_over=len(movable))
            self._count(fallback, fallback_taken=len(movable))
            return await self._submit_to(fallback, movable)

    async def _submit_to(self, name: str, subs: list[Submission]) -> list[SubmitResult]:
        self._count(name, submitted=len(subs))
        try:
            answer = await self._carriers[name].submit(subs)
        except CarrierDown as exc:
            self._count(name, refused_down=len(subs))
            self._set_state(name, DOWN, type(exc).__name__)
            raise
        except Exception as exc:
            self._count(name, unknown_outcome=len(subs))
            self._set_state(name, NO_ANSWER, type(exc).__name__)
            for s in subs:
                self._pin(s.message_id, name)
            raise
        self._set_state(name, UP, "")
        answered = {r.message_id for r in answer}
        for s in subs:  # an answer settles a pin; a message left unanswered may have been sent
            if s.message_id in answered:
                self._pinned.pop(s.message_id, None)
            else:
                self._pin(s.message_id, name)
        self._count(name, accepted=sum(1 for r in answer if r.accepted))
        return [r if r.carrier else replace(r, carrier=name) for r in answer]

    async def pump_receipts(self, handle: ReceiptHandler, limit: int) -> int:
        """Every carrier's due receipts; one failing carrier does not hold back the others' (its error is
        raised after them, so the caller backs off)."""
        total = 0
        error: Exception | None = None
        for name, carrier in self._carriers.items():
            try:
                total += await carrier.pump_receipts(handle, limit)
            except Exception as exc:
                _LOG.warning("carrier %s receipts failed (%s)", name, type(exc).__name__)
                error = error or exc
        if error is not None and not total:
            raise error
        return total

    def _pin(self, message_id: str, name: str) -> None:
        self._pinned[message_id] = name
        self._pinned.move_to_end(message_id)
        while len(self._pinned) > self._pin_limit:
            self._pinned.popitem(last=False)

    def _count(self, name: str, **add: int) -> None:
        h = self._health[name]
        self._health[name] = replace(h, **{k: getattr(h, k) + v for k, v in add.items()})

    def _set_state(self, name: str, state: str, why: str) -> None:
        h = self._health[name]
        if h.state == state:
            return
        self._health[name] = replace(h, state=state, since=self._clock())
        if state == UP:
            _LOG.info("carrier %s is up%s", name, " again" if h.state != UNKNOWN else "")
        elif state == DOWN:
            fallback = self._table.fallback_for(name)
            _LOG.warning("carrier %s is down (%s): none of its batch was taken; %s", name, why,
                         f"fallback carrier {fallback} takes its routes" if fallback else
                         "no fallback, its messages are retried with backoff")
        else:
            _LOG.warning("carrier %s gave no definitive answer (%s): its messages are retried on it, no fallback",
                         name, why)
