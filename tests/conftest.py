"""Pytest fixtures for live tests: the netns `lab` (and `open_lab`, without the ingress drop) and the `live` marker."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.lab import NS_PREFIX, Lab, cleanup_stale

# Shared comparison helpers assert too: let pytest show the values when they fail.
pytest.register_assert_rewrite("tests.tshark")


def pytest_configure(config: pytest.Config) -> None:
    """Register the `live` marker."""
    config.addinivalue_line("markers", "live: needs root and network namespaces (uses the netns lab)")


@functools.cache
def lab_unusable_reason() -> str | None:
    """Why the lab cannot run here, or None if it can."""
    if os.geteuid() != 0:
        return "live lab needs root (network namespaces, AF_PACKET)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"live lab needs `{tool}` on PATH"
    probe = f"{NS_PREFIX}{os.getpid()}-probe"
    try:
        added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10)
        if added.returncode != 0:
            return f"`ip netns add` unusable: {added.stderr.strip()}"
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns` unusable: {exc}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _cleanup_stale_namespaces() -> None:
    """Remove namespaces left by crashed earlier runs, once per session."""
    if lab_unusable_reason() is None:
        cleanup_stale()


@pytest.fixture(autouse=True)
def _live_gate(request: pytest.FixtureRequest) -> None:
    """Skip `live`-marked tests where the lab cannot run."""
    if request.node.get_closest_marker("live") is not None:
        reason = lab_unusable_reason()
        if reason is not None:
            pytest.skip(reason)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A created Lab, destroyed in teardown even when the test fails."""
    reason = lab_unusable_reason()
    if reason is not None:
        pytest.skip(reason)
    the_lab = Lab()
    try:
        the_lab.create()
        yield the_lab
    finally:
        the_lab.destroy()


@pytest.fixture
def open_lab() -> Iterator[Lab]:
    """A lab whose namespace a receives what b sends (no ingress drop), so a server there answers."""
    with Lab(drop_ingress=False) as the_lab:
        yield the_lab
