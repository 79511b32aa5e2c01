"""collab-sim: run a collab job in one process (SimEnv)."""
