"""The chain testbed in one place: its problems and reference solutions (problems.py), the exact
first-error rule the `chain` judge applies (labels.py) and its policy, chain-tiny (policy.py)."""
