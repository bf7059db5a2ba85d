"""Command-line tools (console scripts declared in setup.cfg)."""
