-- Interactive login for customer users and staff: passwords (argon2id PHC strings), TOTP factors (secret
-- encrypted through the keys service), recovery codes and session tokens (SHA-256 only), login throttling,
-- and the staff directory, kept apart from customers. No secret is stored in the clear.

-- The platform account: staff sessions belong to it, so staff actions have an audit feed of their own
-- (the platform log) and staff TOTP secrets an account key. It never has customer users.
ALTER TABLE accounts ADD COLUMN platform boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX accounts_one_platform ON accounts (platform) WHERE platform;
INSERT INTO accounts (name, country, timezone, platform) VALUES ('SendSafe Platform', 'AU', 'UTC', true);

ALTER TABLE users
    ADD COLUMN password_hash         text,
    ADD COLUMN password_change_time  timestamptz,
    ADD COLUMN delete_time           timestamptz;

CREATE TABLE staff_users (
    id                    bigserial PRIMARY KEY,
    username              text NOT NULL CHECK (username ~ '^[A-Za-z0-9._@-]{3,64}$'),
    email                 text NOT NULL,
    display_name          text NOT NULL DEFAULT '',
    role                  text NOT NULL
        CHECK (role IN ('support_readonly', 'support_agent', 'security_admin', 'platform_admin')),
    password_hash         text NOT NULL,
    password_change_time  timestamptz NOT NULL DEFAULT now(),
    active                boolean NOT NULL DEFAULT true,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX staff_users_username_key ON staff_users (lower(username));

-- One TOTP factor per subject ('user' = customer user, 'staff' = staff member). last_step is the last
-- RFC 6238 time step accepted: a code is accepted only by moving it forward (replay protection).
CREATE TABLE totp_factors (
    subject_kind   text NOT NULL CHECK (subject_kind IN ('user', 'staff')),
    subject_id     bigint NOT NULL,
    account_id     bigint NOT NULL REFERENCES accounts (id),
    secret_blob    bytea NOT NULL,
    confirmed      boolean NOT NULL DEFAULT false,
    last_step      bigint NOT NULL DEFAULT 0,
    create_time    timestamptz NOT NULL DEFAULT now(),
    confirm_time   timestamptz,
    PRIMARY KEY (subject_kind, subject_id)
);

CREATE TABLE recovery_codes (
    subject_kind  text NOT NULL CHECK (subject_kind IN ('user', 'staff')),
    subject_id    bigint NOT NULL,
    code_hash     bytea NOT NULL CHECK (length(code_hash) = 32),
    create_time   timestamptz NOT NULL DEFAULT now(),
    use_time      timestamptz,
    PRIMARY KEY (subject_kind, subject_id, code_hash)
);

CREATE TABLE sessions (
    id              text PRIMARY KEY,
    token_hash      bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    subject_kind    text NOT NULL CHECK (subject_kind IN ('user', 'staff')),
    subject_id      bigint NOT NULL,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    amr             text[] NOT NULL,
    mfa_time        timestamptz,
    client_address  text NOT NULL DEFAULT '',
    user_agent      text NOT NULL DEFAULT '',
    create_time     timestamptz NOT NULL DEFAULT now(),
    expire_time     timestamptz NOT NULL,
    last_seen_time  timestamptz NOT NULL DEFAULT now(),
    revoke_time     timestamptz,
    revoke_reason   text
);
CREATE INDEX sessions_subject_live ON sessions (subject_kind, subject_id) WHERE revoke_time IS NULL;

-- Failed-login counters: scope 'subject' (key 'user:<id>' / 'staff:<id>') and 'address' (client IP).
-- Updated with single INSERT ... ON CONFLICT statements, so concurrent attempts never lose a count.
CREATE TABLE login_throttle (
    scope         text NOT NULL CHECK (scope IN ('subject', 'address')),
    key           text NOT NULL,
    failures      integer NOT NULL,
    window_start  timestamptz NOT NULL,
    locked_until  timestamptz,
    PRIMARY KEY (scope, key)
);
