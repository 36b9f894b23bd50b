"""State shared by workers and instances through Redis (REDIS_URL); without it, each part keeps its embedded,
single-process storage (files in the data directory)."""
