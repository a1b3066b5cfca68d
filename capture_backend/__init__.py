"""retrotap's capture engine: sources, decode, counters and snapshots (never imports textual)."""
