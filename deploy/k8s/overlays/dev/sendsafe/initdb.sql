-- dev only: one role and one database per service; no service can read another's tables.
CREATE ROLE identity LOGIN;
CREATE DATABASE identity OWNER identity;
CREATE ROLE keys LOGIN;
CREATE DATABASE keys OWNER keys;
CREATE ROLE messaging LOGIN;
CREATE DATABASE messaging OWNER messaging;
CREATE ROLE audit LOGIN;
CREATE DATABASE audit OWNER audit;
-- The audit service works as this role (INSERT and SELECT on the evidence, never UPDATE or DELETE); its
-- migration grants the table rights. Roles are cluster-wide and `audit` may not create them, so here.
CREATE ROLE sendsafe_audit_writer NOLOGIN;
GRANT sendsafe_audit_writer TO audit;
