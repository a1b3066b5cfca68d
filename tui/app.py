"""Placeholder until the dashboard lands."""

from __future__ import annotations

import argparse

from capture_backend.ring import RingConfig


def run_dashboard(args: argparse.Namespace, interfaces: list[str], ring: RingConfig) -> int:
    """Open the dashboard."""
    raise NotImplementedError
