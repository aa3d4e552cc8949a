"""Nouns, errors, events and settings every stage shares (no I/O beyond reading config files)."""
