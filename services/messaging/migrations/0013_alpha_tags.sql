-- Alpha tags (issue 21): alphanumeric sender IDs an account asks for, reviewed by staff, and the names nobody may
-- send as without proving them (services/messaging/domain/alpha_tags.py holds the rules: the tag's shape, the
-- normalised form two tags of one account are compared in, the skeleton protected names are matched on).
--
-- An approved tag is one of the account's active sender identities; a revoked or cancelled one stops working at
-- once (sends check the state at send time). Rows are never deleted by the customer: a cancelled request keeps its
-- history (the audit log has every step). The tag, the customer's reason and the reviewer's reason are business
-- text, not personal data, and staff read them across accounts: they are stored in clear.
CREATE TABLE alpha_tags (
    id                uuid        PRIMARY KEY,
    seq               bigserial   NOT NULL UNIQUE,           -- list order and page cursor
    account_id        bigint      NOT NULL CHECK (account_id > 0),
    user_id           bigint      NOT NULL,                  -- who asked
    tag               text        NOT NULL,                  -- as requested ("My Shop")
    normalized        text        NOT NULL,                  -- upper case, letters and digits ("MYSHOP")
    request_reason    text        NOT NULL,                  -- the customer's
    countries         text[]      NOT NULL DEFAULT '{}',
    state             text        NOT NULL DEFAULT 'requested'
        CHECK (state IN ('requested', 'approved', 'rejected', 'revoked', 'cancelled')),
    reviewer_staff_id bigint,                                -- the staff member of the last decision
    review_reason     text        NOT NULL DEFAULT '',       -- shown to the customer
    evidence          text        NOT NULL DEFAULT '',       -- the document checked (protected names)
    protected_name    text        NOT NULL DEFAULT '',       -- the protected name it matched when approved
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    review_time       timestamptz
);
-- One live request or approval per tag and account (a rejected, revoked or cancelled one may be asked for again).
CREATE UNIQUE INDEX alpha_tags_live ON alpha_tags (account_id, normalized) WHERE state IN ('requested', 'approved');
CREATE INDEX alpha_tags_by_account ON alpha_tags (account_id, seq);
CREATE INDEX alpha_tags_pending ON alpha_tags (seq) WHERE state = 'requested';
CREATE INDEX alpha_tags_approved ON alpha_tags (account_id, tag) WHERE state = 'approved';

-- Names no account may send as unless a reviewer records the evidence that it holds the name. Staff edit the list
-- (security roles); this starter list covers the banks, payment brands, government bodies, carriers and couriers
-- most imitated in AU/UK/US smishing. `skeleton` is the matching form (alpha_tags.skeleton(name)).
CREATE TABLE protected_sender_names (
    skeleton    text        PRIMARY KEY,
    name        text        NOT NULL,
    category    text        NOT NULL,
    added_by    text        NOT NULL DEFAULT 'seed',          -- "seed" or "staff:<id>"
    create_time timestamptz NOT NULL DEFAULT now()
);
INSERT INTO protected_sender_names (name, skeleton, category) VALUES
    ('Commonwealth Bank', 'COMMONWEAITHBANK', 'bank'),
    ('CommBank', 'COMMBANK', 'bank'),
    ('Westpac', 'WESTPAC', 'bank'),
    ('ANZ', 'ANZ', 'bank'),
    ('NAB', 'NAB', 'bank'),
    ('St George', 'STGEORGE', 'bank'),
    ('Macquarie Bank', 'MACQUARIEBANK', 'bank'),
    ('Bendigo Bank', 'BENDIGOBANK', 'bank'),
    ('HSBC', 'HSBC', 'bank'),
    ('Barclays', 'BARCIAYS', 'bank'),
    ('Lloyds', 'IIOYDS', 'bank'),
    ('NatWest', 'NATWEST', 'bank'),
    ('Santander', 'SANTANDER', 'bank'),
    ('Halifax', 'HAIIFAX', 'bank'),
    ('Monzo', 'MONZO', 'bank'),
    ('Revolut', 'REVOIUT', 'bank'),
    ('Chase', 'CHASE', 'bank'),
    ('Wells Fargo', 'WEIISFARGO', 'bank'),
    ('Citibank', 'CITIBANK', 'bank'),
    ('Bank of America', 'BANKOFAMERICA', 'bank'),
    ('Capital One', 'CAPITAIONE', 'bank'),
    ('PayPal', 'PAYPAI', 'payments'),
    ('Visa', 'VISA', 'payments'),
    ('Mastercard', 'MASTERCARD', 'payments'),
    ('American Express', 'AMERICANEXPRESS', 'payments'),
    ('Amex', 'AMEX', 'payments'),
    ('Stripe', 'STRIPE', 'payments'),
    ('Afterpay', 'AFTERPAY', 'payments'),
    ('Apple Pay', 'APPIEPAY', 'payments'),
    ('Google Pay', 'GOOGIEPAY', 'payments'),
    ('ATO', 'ATO', 'government'),
    ('myGov', 'MYGOV', 'government'),
    ('Centrelink', 'CENTREIINK', 'government'),
    ('Medicare', 'MEDICARE', 'government'),
    ('Services Australia', 'SERVICESAUSTRAIIA', 'government'),
    ('HMRC', 'HMRC', 'government'),
    ('GOV.UK', 'GOVUK', 'government'),
    ('DVLA', 'DVIA', 'government'),
    ('NHS', 'NHS', 'government'),
    ('IRS', 'IRS', 'government'),
    ('Social Security', 'SOCIAISECURITY', 'government'),
    ('Police', 'POIICE', 'government'),
    ('Government', 'GOVERNMENT', 'government'),
    ('Telstra', 'TEISTRA', 'carrier'),
    ('Optus', 'OPTUS', 'carrier'),
    ('Vodafone', 'VODAFONE', 'carrier'),
    ('Verizon', 'VERIZON', 'carrier'),
    ('T-Mobile', 'TMOBIIE', 'carrier'),
    ('AT&T', 'ATT', 'carrier'),
    ('Australia Post', 'AUSTRAIIAPOST', 'delivery'),
    ('AusPost', 'AUSPOST', 'delivery'),
    ('Royal Mail', 'ROYAIMAII', 'delivery'),
    ('USPS', 'USPS', 'delivery'),
    ('FedEx', 'FEDEX', 'delivery'),
    ('DHL', 'DHI', 'delivery'),
    ('Microsoft', 'MICROSOFT', 'brand'),
    ('Amazon', 'AMAZON', 'brand'),
    ('Netflix', 'NETFIIX', 'brand'),
    ('WhatsApp', 'WHATSAPP', 'brand'),
    ('Facebook', 'FACEBOOK', 'brand'),
    ('Google', 'GOOGIE', 'brand')
ON CONFLICT (skeleton) DO NOTHING;
