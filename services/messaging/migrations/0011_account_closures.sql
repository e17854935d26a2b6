-- Account closure (issue 15): an account whose closure was requested sends nothing (its scheduled and queued
-- messages were cancelled and refunded when this row was written). After the account's keys are destroyed every
-- other row of the account is deleted; this marker (ids and times only) stays so nothing is ever sent for it.
CREATE TABLE account_closures (
    account_id  bigint      PRIMARY KEY CHECK (account_id > 0),
    stop_time   timestamptz NOT NULL DEFAULT now(),
    purge_time  timestamptz
);
