-- Self-service sign-up (issue 15): an account opened through POST /v1/signup (or by staff for a customer) stays in
-- test mode until its owner enters the code emailed to the main user's address. One row per account: the current
-- code as an argon2id hash only (never the code), when it expires, the wrong attempts it has taken, how many codes
-- were sent and when the last one went, and when the account was verified. No email address or name is kept
-- here: the address is the main user's (sealed in users.email_ct) and the email is built when it is sent.
CREATE TABLE signup_verifications (
    account_id     bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    user_id        bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    origin         text NOT NULL CHECK (origin IN ('signup', 'staff')),
    code_hash      text,
    code_expire_time timestamptz,
    attempts       integer NOT NULL DEFAULT 0,
    codes_sent     integer NOT NULL DEFAULT 0,
    last_send_time timestamptz,
    create_time    timestamptz NOT NULL DEFAULT now(),
    verify_time    timestamptz
);

-- Sign-ups and code entries are counted per client address and network with the login counters (same table,
-- same atomic update), under scopes of their own so a burst of sign-ups never locks anyone's login.
ALTER TABLE login_throttle DROP CONSTRAINT login_throttle_scope_check;
ALTER TABLE login_throttle ADD CONSTRAINT login_throttle_scope_check CHECK (scope IN (
    'subject', 'address', 'network', 'signup_address', 'signup_network', 'signup_code_address', 'signup_code_network'
));
