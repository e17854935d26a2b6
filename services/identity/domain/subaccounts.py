"""Sub-account management rules: flag and notes checks, the validated create and change records,
and the delegation rule every create, change, re-key, password reset and delete passes. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.identity.domain.accounts import User
from services.identity.domain.errors import (
    DelegationExceedsActor,
    FlagInvalid,
    MainUserProtected,
    NameInvalid,
    OwnAccessUnchangeable,
    RestrictionNotLiftable,
)
from services.identity.domain.flags import FLAG_NAMES, GRANT_FLAGS, RESTRICTION_FLAGS, AccessFlags, derive_permissions
from svckit.senders import check_allowed_senders, senders_within

MAX_NOTES = 1000


def check_flag(name: str, value: int) -> bool:
    """ClickSend flags are the integers 0 and 1."""
    if value not in (0, 1):
        raise FlagInvalid(f"{name} must be 0 or 1", field=name)
    return bool(value)


def check_notes(raw: str | None) -> str | None:
    if raw is None:
        return None
    if len(raw) > MAX_NOTES:
        raise NameInvalid(f"notes must be at most {MAX_NOTES} characters", field="notes")
    return raw


@dataclass(frozen=True)
class NewSubaccount:
    """A validated request to create a sub-account (password already checked against the policy)."""

    account_id: int
    api_username: str
    email: str
    phone_number: str
    first_name: str
    last_name: str
    notes: str | None
    flags: AccessFlags
    allowed_senders: tuple[str, ...] = ()  # the creator's: a limit is inherited


@dataclass(frozen=True)
class SubaccountChanges:
    """Validated changes; None means "keep". `password_hash` is set when a new password was given."""

    email: str | None = None
    phone_number: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    notes: str | None = None
    set_notes: bool = False
    flags: AccessFlags | None = None
    password_hash: str | None = None

    def changed_fields(self) -> list[str]:
        out = [f for f in ("email", "phone_number", "first_name", "last_name") if getattr(self, f) is not None]
        if self.set_notes:
            out.append("notes")
        if self.flags is not None:
            out.append("flags")
        if self.password_hash is not None:
            out.append("password")
        return out


def _granted(flags: AccessFlags, is_main: bool) -> frozenset[str]:
    return frozenset(GRANT_FLAGS if is_main else (n for n in GRANT_FLAGS if getattr(flags, n)))


def _restricted(flags: AccessFlags) -> frozenset[str]:
    return frozenset(n for n in RESTRICTION_FLAGS if getattr(flags, n))


def delegate(actor: User, target: User | None, requested: Mapping[str, bool] | None = None) -> AccessFlags:
    """The delegation rule, for every path that creates, changes, re-keys, resets or deletes a user: the
    target's flags after the change, or a PermissionDenied saying why the actor may not do it.

    `target` None creates a user with the `requested` flags; otherwise `requested` holds the flags a change
    sets (None or empty: the flags stay, as for a delete, a new API key, a password or a contact change).

    - The main user is changed only by itself, and its access never through this path.
    - Restrictions are inherited: a user created by an actor under a restriction is under it too, whatever
      was requested; an actor under a restriction never lifts it, from anyone.
    - Nobody changes their own access flags or restrictions through this path.
    - The target's resulting grants (the flags, and the permissions `derive_permissions` gives them, as if
      enabled) must be a subset of the actor's own, and the target must stay under every restriction the
      actor is under (its sender limit included: `delegate_senders`): an actor acts only on users who can do
      no more than itself.
    """
    wanted = dict(requested or {})
    unknown = sorted(set(wanted) - set(FLAG_NAMES))
    if unknown:
        raise FlagInvalid(f"unknown flag {unknown[0]}", field=unknown[0])
    is_main = target is not None and target.is_main
    if target is not None and target.is_main and not actor.is_main:
        raise MainUserProtected("only the main user may change the main user")
    if is_main and wanted:
        raise MainUserProtected("the main user's access flags cannot be changed")
    actor_restrictions = _restricted(actor.flags)
    if target is None:
        wanted.update({name: True for name in actor_restrictions})  # inherited, whatever the request says
        base = AccessFlags()
    else:
        base = target.flags
        for name in sorted(actor_restrictions):
            if name in wanted and not wanted[name] and getattr(base, name):
                raise RestrictionNotLiftable(
                    f"you cannot turn {name} off: you are under it yourself; ask a user who is not", field=name
                )
    resulting = AccessFlags(**{name: wanted.get(name, getattr(base, name)) for name in FLAG_NAMES})
    if target is not None and target.id == actor.id and resulting != target.flags:
        raise OwnAccessUnchangeable("you cannot change your own access flags; ask the account's main user")
    beyond = sorted(
        (_granted(resulting, is_main) - _granted(actor.flags, actor.is_main))
        | (derive_permissions(resulting, is_main=is_main, enabled=True) - actor.permissions)
    )
    if beyond:
        who = "the new user" if target is None else f"user {target.api_username}"
        raise DelegationExceedsActor(
            f"{who} would hold {', '.join(beyond)}, which you do not hold: only a user who holds them may do this"
        )
    if target is not None and not senders_within(target.allowed_senders, actor.allowed_senders):
        raise DelegationExceedsActor(
            f"user {target.api_username} may send from senders you may not: only a user who may do this")
    unrestricted = sorted(actor_restrictions - _restricted(resulting))
    if target is not None and unrestricted:  # a new user inherited them above
        raise DelegationExceedsActor(
            f"user {target.api_username} is not under {', '.join(unrestricted)}, which you are under:"
            " only a user who is not may do this"
        )
    return resulting


def delegate_senders(actor: User, target: User, requested: Sequence[str]) -> tuple[str, ...]:
    """The target's sender limit after `actor` sets it to `requested` (normalised; empty lifts it), or why not.

    A sender limit is a restriction (issue 21): set on a sub-account by a user manager through `delegate`'s rule,
    inherited by the users a limited user creates, and never lifted or widened by someone under it: a limited
    actor sets only a non-empty subset of its own. Nobody limits the main user or changes their own limit."""
    wanted = check_allowed_senders(requested)
    if target.is_main:
        raise MainUserProtected("the main user's senders cannot be limited")
    if target.id == actor.id:
        raise OwnAccessUnchangeable("you cannot change your own sender limit; ask the account's main user")
    delegate(actor, target)
    if actor.allowed_senders and not wanted:
        raise RestrictionNotLiftable("you cannot lift a sender limit: you are under one yourself; ask a user who is"
                                     " not", field="allowed_senders")
    if not senders_within(wanted, actor.allowed_senders):
        raise DelegationExceedsActor("allowed_senders must be within your own sender limit: only a user who may"
                                     " send from them may do this")
    return wanted
