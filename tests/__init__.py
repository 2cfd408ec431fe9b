"""Podspan test suite."""
