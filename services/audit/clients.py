"""The audit service calls no other service."""
