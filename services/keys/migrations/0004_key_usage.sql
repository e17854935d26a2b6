-- What each data-owning service (identity, messaging) holds under each account key version, as counted at
-- the end of its last complete rewrap pass (svckit.envelope_rewrap). Retiring a version is refused until
-- every data owner has reported a pass that started after the new minimum version existed, with nothing
-- left below it: otherwise retirement would make stored messages and TOTP secrets unreadable.
CREATE TABLE key_usage_passes (
    service          text PRIMARY KEY,
    pass_start_time  timestamptz NOT NULL,
    report_time      timestamptz NOT NULL
);

CREATE TABLE key_usage (
    service     text    NOT NULL,
    account_id  bigint  NOT NULL,
    version     integer NOT NULL,
    items       bigint  NOT NULL CHECK (items >= 0),
    PRIMARY KEY (account_id, service, version)
);
