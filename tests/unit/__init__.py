"""Unit tests: files, generated captures, the dashboard under Pilot (a few live tests in mixed modules)."""
