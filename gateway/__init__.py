"""SendSafe's HTTPS gateway: TLS termination, authentication, JSON <-> gRPC, trace start, audit."""
