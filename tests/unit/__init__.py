"""Unit tests: no cluster, no kernel probes."""
