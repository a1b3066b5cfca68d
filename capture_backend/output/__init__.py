"""Snapshots as rows for people and scripts: stats text, NDJSON and CSV."""
