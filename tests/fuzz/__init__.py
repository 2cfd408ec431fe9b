"""Coverage-guided parser fuzzing (atheris) and its corpus replay."""
