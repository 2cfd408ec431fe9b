"""Protocol parsers: one module per protocol, each with `detect()` and a `Parser`."""
