-- dev only: one role and one database per service; no service can read another's tables.
CREATE ROLE identity LOGIN;
CREATE DATABASE identity OWNER identity;
CREATE ROLE keys LOGIN;
CREATE DATABASE keys OWNER keys;
CREATE ROLE messaging LOGIN;
CREATE DATABASE messaging OWNER messaging;
CREATE ROLE audit LOGIN;
CREATE DATABASE audit OWNER audit;
