"""The vocabulary of points: the reading, its names, line protocol, and its stored form.

What it does: defines a reading (`model`), decides which names and values line protocol can carry
exactly (`names`), encodes them (`lineproto`), parses line protocol from sensors (`lineparse`),
packs a reading for the buffer (`record`), and reads topic templates (`topics`).
Promises: pure and exact; an encoded reading parses back to itself (DESIGN invariant 7).
May import: `gateway.errors` only. Imports no I/O library (tests/unit/test_layout.py).
"""
