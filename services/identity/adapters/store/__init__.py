"""All of identity's SQL: one query class per resource (`users`, `auth`, `staff`) over the shared `rows`;
`pg.PgIdentityStore` combines them into the one store app.py builds."""
