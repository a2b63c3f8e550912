"""The flusher: from the buffer to the database, fairly, in batches sized by observed latency.

What it does: picks devices, reads and coalesces batches, writes them through a sink (`sink`:
InfluxDB v1 `/write` or the v2 API), deletes what landed, retries with backoff, isolates refused
points into the dead letters (`flusher`). `core/` holds coalescing and the batch-size controller.
Promises: delete after confirm, per-device order, a later reading wins (DESIGN 2, 3, 10).
May import: the buffer, observe, config, points, errors, backoff, tls. Never ingest.
"""
