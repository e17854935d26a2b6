"""Identity's pure rules and records, one module per topic: no I/O, no gRPC, no SQL."""
