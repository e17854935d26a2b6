"""The identity store app.py builds: every query class of this package over one pool."""

from __future__ import annotations

from services.identity.adapters.store.account_policy import AccountPolicyQueries
from services.identity.adapters.store.auth import AuthQueries
from services.identity.adapters.store.closures import ClosureQueries
from services.identity.adapters.store.signup import SignupQueries
from services.identity.adapters.store.staff import StaffQueries
from services.identity.adapters.store.users import UserQueries


class PgIdentityStore(UserQueries, AuthQueries, StaffQueries, ClosureQueries, AccountPolicyQueries, SignupQueries):
    """The one store app.py builds: every query class over one pool."""

    async def platform_account_id(self) -> int:
        value = await self._pool.fetchval("SELECT id FROM accounts WHERE platform")
        assert value is not None, "migration 0002 creates the platform account"
        return int(value)
