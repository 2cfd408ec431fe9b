"""Protocol parser tests."""
