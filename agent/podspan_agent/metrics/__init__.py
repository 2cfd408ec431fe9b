"""Metrics the agent derives from every span before sampling (RED histograms, service graph) and
about itself, and their Prometheus endpoint."""
