"""The messaging process's roles besides the API server (started from app.py by `python -m services.messaging
worker|notifier`): the dispatch worker's loops, and the HTTPS receiver of carrier callbacks."""
