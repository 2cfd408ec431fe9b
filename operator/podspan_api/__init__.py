"""Podspan API contract: pydantic models of the podspan.dev CRDs, shared by operator and agent."""
