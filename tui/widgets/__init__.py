"""One module per dashboard view or panel."""
