"""Agent tests on the real kernel: real programs, real servers, real OTLP receiver."""
