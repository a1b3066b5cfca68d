"""retrotap's terminal interface (Textual) and command line."""

import capture_backend  # noqa: F401  (sets the environment NumPy reads at import, before anything imports it)
