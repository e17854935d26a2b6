-- Customer accounts and their users (ClickSend sub-accounts). The main user is the one ClickSend
-- calls "the account"; permissions are derived from the flags in code (services/identity/domain.py).
-- Flags default to least privilege. No secrets live here: API keys belong to the keys service.
CREATE TABLE accounts (
    id           bigserial PRIMARY KEY,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    country      text NOT NULL CHECK (country ~ '^[A-Z]{2}$'),
    timezone     text NOT NULL,
    test_mode    boolean NOT NULL DEFAULT false,
    create_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id                      bigserial PRIMARY KEY,
    account_id              bigint NOT NULL REFERENCES accounts (id),
    api_username            text NOT NULL CHECK (api_username ~ '^[A-Za-z0-9._@-]{3,64}$'),
    email                   text NOT NULL,
    phone_number            text NOT NULL DEFAULT '',
    first_name              text NOT NULL DEFAULT '',
    last_name               text NOT NULL DEFAULT '',
    is_main                 boolean NOT NULL DEFAULT false,
    notes                   text,
    access_users            boolean NOT NULL DEFAULT false,
    access_billing          boolean NOT NULL DEFAULT false,
    access_reporting        boolean NOT NULL DEFAULT false,
    access_contacts         boolean NOT NULL DEFAULT false,
    access_settings         boolean NOT NULL DEFAULT false,
    access_sms              boolean NOT NULL DEFAULT false,
    access_email            boolean NOT NULL DEFAULT false,
    access_voice            boolean NOT NULL DEFAULT false,
    access_fax              boolean NOT NULL DEFAULT false,
    access_post             boolean NOT NULL DEFAULT false,
    access_mms              boolean NOT NULL DEFAULT false,
    access_reseller         boolean NOT NULL DEFAULT false,
    access_smpp             boolean NOT NULL DEFAULT false,
    access_global_sending   boolean NOT NULL DEFAULT false,
    hide_pricing            boolean NOT NULL DEFAULT false,
    share_campaigns         boolean NOT NULL DEFAULT false,
    sms_deidentify_message  boolean NOT NULL DEFAULT false,
    active                  boolean NOT NULL DEFAULT true,
    banned                  boolean NOT NULL DEFAULT false,
    create_time             timestamptz NOT NULL DEFAULT now(),
    update_time             timestamptz NOT NULL DEFAULT now()
);
-- Usernames are unique ignoring case (the allowed characters are ASCII, so lower() is exact).
CREATE UNIQUE INDEX users_api_username_key ON users (lower(api_username));
CREATE UNIQUE INDEX users_one_main_per_account ON users (account_id) WHERE is_main;
CREATE INDEX users_account ON users (account_id);
