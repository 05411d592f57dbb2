"""Reference loaders, each run as its own process (as a hand-written loader would be)."""
