"""Interop harnesses: peers nobody here wrote (Jasmin), installed and provisioned for the interop tests."""
