"""The gateway's HTTP server: metrics, health, and the read API with its OpenAPI document.

What it does: serves `/metrics`, `/healthz`, `/readyz` (`httpserver`) and `/api/v1/...`
(`readapi`, `apispec`), reading the database on a miss (`dbread`).
May import: buffer, flush, observe, config, points, errors, tls. Never ingest, service, tools.
"""
