"""What identity talks to: PostgreSQL (`store/`), argon2 (`hasher.py`), the keys and messaging services."""
