"""The buffer's pure core: the ledger of FIFOs and totals, admission decisions, consistency checks.

May import: config, points, errors. No I/O library.
"""
