"""Per-device health: the book of open conditions, the probes, the event watcher."""
