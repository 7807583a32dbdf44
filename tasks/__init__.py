"""Tasks: the problems a policy is asked (generated arithmetic, the chain testbed, GSM8K, MATH-500),
how they are prompted and streamed, and the chain testbed's exact labels and policy build.

Builds on core only; judges, prm and rl build on it (tests/test_import_floors.py).
"""
