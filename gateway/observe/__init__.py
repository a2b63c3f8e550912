"""Read-only views of the running gateway: metrics, accounting identities, health.

What it does: every Prometheus metric (`metrics`, `brokerstats`), the accounting that mirrors
invariant 5 (`accounting`), liveness and readiness (`health`), and merging the pages of several
workers (`metricsmerge`). Promises: observing never changes what is observed.
May import: config, points, errors. Every stage may import it.
"""
