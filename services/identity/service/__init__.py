"""Identity's use cases, one module per resource; `ports.py` holds what they need from the outside world."""
