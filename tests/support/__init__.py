"""Helpers for tests and benchmarks that follow the protocol document (not used in production)."""
