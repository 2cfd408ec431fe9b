"""The end-to-end scenario on a real kind cluster (see docs/e2e.md)."""
