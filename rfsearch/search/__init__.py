"""The shared search loop and the context strategies step in."""
