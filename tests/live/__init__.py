"""Live tests: real traffic in the netns lab (root, `pytest.mark.live`)."""
