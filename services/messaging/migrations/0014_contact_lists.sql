-- Contact lists (issue 21): ClickSend's /v3/lists and /v3/lists/{list_id}/contacts, CSV imports, sends to a list.
--
-- Everything a customer writes about a person is personal data and is stored only sealed under the account's keys
-- (svckit.envelope, AES-256-GCM, associated data {account, record type, id}): a contact's fields (number, names,
-- email, custom fields, address...) as ONE sealed JSON object per contact, a list's name, an uploaded CSV until its
-- import ends. Equality needs keyed hashes under the account's index key (domain.privacy): `phone_hash` is the
-- same hash as messages.to_hash and opt_outs, so a list's opted-out numbers are found without opening anything;
-- `email_hash` de-duplicates contacts without a number. Ids are ClickSend's integers.
CREATE TABLE contact_lists (
    list_id      bigserial   PRIMARY KEY,
    account_id   bigint      NOT NULL CHECK (account_id > 0),
    name_ct      bytea       NOT NULL,               -- the list's name, sealed (contact_list.name)
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contact_lists_by_account ON contact_lists (account_id, list_id);

CREATE TABLE contacts (
    contact_id   bigserial   PRIMARY KEY,
    list_id      bigint      NOT NULL REFERENCES contact_lists (list_id) ON DELETE CASCADE,
    account_id   bigint      NOT NULL CHECK (account_id > 0),
    data_ct      bytea       NOT NULL,               -- every field, sealed JSON (contact)
    phone_hash   bytea,                              -- number_index(E.164), NULL without a number
    email_hash   bytea,                              -- keyed hash of the lower-cased email, NULL without one
    import_id    bigint,                             -- the import that added it (NULL: added one by one)
    create_time  timestamptz NOT NULL DEFAULT now(),
    update_time  timestamptz NOT NULL DEFAULT now()
);
-- One contact per number in a list; a contact without a number is unique by its email.
CREATE UNIQUE INDEX contacts_list_phone ON contacts (list_id, phone_hash) WHERE phone_hash IS NOT NULL;
CREATE UNIQUE INDEX contacts_list_email ON contacts (list_id, email_hash)
    WHERE phone_hash IS NULL AND email_hash IS NOT NULL;
CREATE INDEX contacts_by_list ON contacts (list_id, contact_id);
CREATE INDEX contacts_by_account ON contacts (account_id);

-- A CSV upload, imported by a job (any replica claims it: FOR UPDATE SKIP LOCKED with a lease). An import is
-- all-or-nothing: its contacts are inserted in one transaction that also marks it done and drops the sealed file,
-- so a job that dies part-way leaves nothing and the next claim starts it again. `problems` holds
-- {line, reason} pairs: line numbers and stable reasons, never a value from the file.
CREATE TABLE contact_imports (
    import_id    bigserial   PRIMARY KEY,
    list_id      bigint      NOT NULL REFERENCES contact_lists (list_id) ON DELETE CASCADE,
    account_id   bigint      NOT NULL CHECK (account_id > 0),
    user_id      bigint      NOT NULL,
    state        text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'failed')),
    file_ct      bytea,                              -- the uploaded CSV, sealed (contact_import.file); NULL once ended
    field_order  text[]      NOT NULL,
    has_header   boolean     NOT NULL DEFAULT false,
    rows_read    integer     NOT NULL DEFAULT 0,
    imported     integer     NOT NULL DEFAULT 0,
    duplicates   integer     NOT NULL DEFAULT 0,
    invalid      integer     NOT NULL DEFAULT 0,
    problems     jsonb       NOT NULL DEFAULT '[]',
    failure      text        NOT NULL DEFAULT '',    -- a stable reason when state = 'failed'
    claim_token  text,
    claim_until  timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    create_time  timestamptz NOT NULL DEFAULT now(),
    finish_time  timestamptz
);
CREATE INDEX contact_imports_due ON contact_imports (import_id) WHERE state IN ('pending', 'running');
CREATE INDEX contact_imports_by_list ON contact_imports (list_id, import_id);
CREATE INDEX contact_imports_by_account ON contact_imports (account_id);
