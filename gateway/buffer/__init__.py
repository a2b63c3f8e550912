"""The durable buffer: one FIFO of readings per device in LMDB, with exact accounting.

What it does: stores, reads, leases and deletes readings (`store`, `transaction`), carries out
admission near capacity (`admitter`, with the decisions in `core/admission`), guards the disk
budget (`capacity`), checks and repairs its accounting (`integrity`), keeps the last value of
each series (`latest`), the dead letters (`deadletters`) and the reject log (`rejects`), and
shows its state as plain data (`view`). `core/` holds the pure ledger, admission and checks.
Promises: DESIGN invariants 2, 4, 5, 6, 9: nothing acknowledged is lost, exact counts after
kill -9, memory bounded by configuration. May import: observe, config, points, errors, tls.
Never ingest, flush, api, service or tools: they come to it.
"""
