"""Applications of the engine: one video (generate.py), a set of them over ranks (prompt_sets.py), the input checks
they and the server share (checks.py), the mp4 a run writes (recording.py)."""
