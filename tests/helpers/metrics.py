"""Scraping a Prometheus exposition over loopback HTTP and parsing its samples."""

from __future__ import annotations

import urllib.parse
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never leave loopback via a proxy


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    assert url.startswith("http://127.0.0.1:")
    with NO_PROXY.open(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
