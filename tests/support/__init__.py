"""Helpers shared by tests: emulators and loopback protocol responders."""
