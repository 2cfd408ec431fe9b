"""Podspan operator: kopf handlers, pure render and status aggregation, one module that writes to the API."""
