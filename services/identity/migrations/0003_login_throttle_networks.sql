-- Login throttling also counts per client network (IPv6 /64, IPv4 /24), keyed by the network in CIDR form.
ALTER TABLE login_throttle DROP CONSTRAINT login_throttle_scope_check;
ALTER TABLE login_throttle ADD CONSTRAINT login_throttle_scope_check CHECK (scope IN ('subject', 'address', 'network'));
