"""The infrastructure floor: config validation, run bookkeeping, row reading, checkpoint IO, ranks and
DeepSpeed init, device resolution, model loading, answer checking and step splitting.

Imports nothing from tasks, judges, prm, rl or bench; they build on it (tests/test_import_floors.py).
"""
