"""The OpenAPI 3.0 document of the read API (gateway/api/readapi.py), at /api/v1/openapi.json.

The tests validate it with openapi-spec-validator and check every answer of a running gateway
against it with schemathesis.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}
_FIELD_VALUE = {
    "oneOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}],
    "description": "A float, an integer, a boolean or a string, as the device sent it",
}
_STATE = {
    "type": "string",
    "enum": ["buffered", "delivered"],
    "description": "buffered: accepted, not yet in the database; delivered: in the database",
}


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _ok(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "description": "how many to list, newest first (default 20, at most 1000)",
    "schema": {"type": "integer", "minimum": 0, "maximum": 1000},
}
_UNAUTHORIZED = {"description": "a bearer token is configured and was not given"}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "gateway read API",
        "version": __version__,
        "description": (
            "What the gateway holds: devices, the latest value of each of a device's series "
            "(accepted readings before the database has them), and the buffer's state. "
            "Read-only. With [metrics] token set, every path needs "
            "`Authorization: Bearer <token>`."
        ),
    },
    "paths": {
        "/api/v1/devices": {
            "get": {
                "summary": "Devices with buffered readings or a latest value, a page at a time",
                "description": (
                    "In name order; follow `next` as `after` for the next page. "
                    "The names are indexed at most once a second, so a device seen for the "
                    "first time may take that long to be listed."
                ),
                "operationId": "listDevices",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "description": "devices in the page (default 100, at most 1000)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "required": False,
                        "description": "list the devices named after this one (`next`)",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "name",
                        "in": "query",
                        "required": False,
                        "description": "list only the device of this exact name, if any",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _ok("DeviceList", "a page of the devices, by name"),
                    "400": _error_response("a malformed parameter"),
                    "401": _UNAUTHORIZED,
                    "503": _error_response("the gateway is stopping"),
                },
            }
        },
        "/api/v1/devices/{device}/latest": {
            "get": {
                "summary": "The latest reading of each series of a device",
                "description": (
                    "From the gateway's last-value table; on a miss the database is read, "
                    "and what it returns is kept for the next request. A device the database "
                    "did not know is answered 404 without a query for [api] miss_cache_s."
                ),
                "operationId": "latestOfDevice",
                "parameters": [
                    {
                        "name": "device",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": _ok("DeviceLatest", "the latest reading of each series"),
                    "401": _UNAUTHORIZED,
                    "404": _error_response("no reading of the device, here or in the database"),
                    "502": _error_response("not here, and the database could not be read"),
                    "503": _error_response(
                        "not here, and [api] max_database_reads misses are reading the "
                        "database already; retry after the Retry-After header's seconds"
                    ),
                },
            }
        },
        "/api/v1/status": {
            "get": {
                "summary": "Totals, capacity use, lag, batch size, sink and admission state",
                "operationId": "status",
                "parameters": [
                    {
                        "name": "top",
                        "in": "query",
                        "required": False,
                        "description": "devices to list, largest backlog first (default 20)",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
                "responses": {
                    "200": _ok("Status", "the gateway's state"),
                    "400": _error_response("a malformed parameter"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v1/dead-letters": {
            "get": {
                "summary": "The points the database refused, newest first, and how many are held",
                "operationId": "deadLetters",
                "parameters": [_LIMIT],
                "responses": {
                    "200": _ok("DeadLetters", "the newest dead letters"),
                    "400": _error_response("a malformed parameter"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v1/rejects": {
            "get": {
                "summary": "Samples of the messages refused as invalid, newest first",
                "operationId": "rejects",
                "parameters": [_LIMIT],
                "responses": {
                    "200": _ok("Rejects", "the newest refused messages"),
                    "400": _error_response("a malformed parameter"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v1/sparkplug": {
            "get": {
                "summary": "Sparkplug B edge nodes and devices: online, bdSeq, metrics defined",
                "operationId": "sparkplug",
                "responses": {
                    "200": _ok("SparkplugNodes", "every edge node seen, by group and name"),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "the OpenAPI document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "401": _UNAUTHORIZED,
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Error": _ERROR,
            "DeadLetters": {
                "type": "object",
                "required": ["count", "dead_letters"],
                "properties": {
                    "count": {"type": "integer", "minimum": 0},
                    "dead_letters": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "device", "reason", "line"],
                            "properties": {
                                "id": {"type": "integer"},
                                "device": {"type": "string"},
                                "reason": {"type": "string"},
                                "line": {"type": "string"},
                            },
                        },
                    },
                },
            },
            "Rejects": {
                "type": "object",
                "required": ["rejects"],
                "properties": {
                    "rejects": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["ts_ns", "topic", "reason", "detail", "payload"],
                            "properties": {
                                "ts_ns": {"type": "integer"},
                                "topic": {"type": "string"},
                                "reason": {"type": "string"},
                                "detail": {"type": "string"},
                                "payload": {"type": "string"},
                                "payload_bytes": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                },
            },
            "SparkplugNodes": {
                "type": "object",
                "required": ["nodes"],
                "properties": {
                    "nodes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["group", "edge_node", "online", "metrics", "devices"],
                            "properties": {
                                "group": {"type": "string"},
                                "edge_node": {"type": "string"},
                                "online": {"type": "boolean"},
                                "bd_seq": {"type": "integer", "nullable": True},
                                "metrics": {"type": "integer", "minimum": 0},
                                "birth_ns": {"type": "integer", "nullable": True},
                                "death_ns": {"type": "integer", "nullable": True},
                                "devices": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["device", "online", "metrics"],
                                        "properties": {
                                            "device": {"type": "string"},
                                            "online": {"type": "boolean"},
                                            "metrics": {"type": "integer", "minimum": 0},
                                            "birth_ns": {"type": "integer", "nullable": True},
                                            "death_ns": {"type": "integer", "nullable": True},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "DeviceList": {
                "type": "object",
                "required": ["devices", "next", "total"],
                "properties": {
                    "next": {
                        "type": "string",
                        "nullable": True,
                        "description": "the `after` of the next page; null on the last",
                    },
                    "total": {
                        "type": "integer",
                        "minimum": 0,
                        "description": (
                            "devices in all pages (with workers, a device several workers "
                            "hold counts once for each)"
                        ),
                    },
                    "devices": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "device",
                                "buffered_readings",
                                "oldest_buffered_age_s",
                                "last_seen",
                            ],
                            "properties": {
                                "device": {"type": "string"},
                                "buffered_readings": {"type": "integer", "minimum": 0},
                                "oldest_buffered_age_s": {"type": "number", "nullable": True},
                                "last_seen": {
                                    "type": "string",
                                    "format": "date-time",
                                    "nullable": True,
                                    "description": "when the newest reading was taken",
                                },
                            },
                        },
                    },
                },
            },
            "DeviceLatest": {
                "type": "object",
                "required": ["device", "source", "measurements"],
                "properties": {
                    "device": {"type": "string"},
                    "source": {
                        "type": "string",
                        "enum": ["cache", "database"],
                        "description": "cache: the last-value table; database: read on a miss",
                    },
                    "measurements": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "measurement",
                                "tags",
                                "time",
                                "time_ns",
                                "state",
                                "fields",
                            ],
                            "properties": {
                                "measurement": {"type": "string"},
                                "tags": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                                "time": {"type": "string", "format": "date-time"},
                                "time_ns": {"type": "integer"},
                                "state": _STATE,
                                "fields": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "object",
                                        "required": ["value", "state"],
                                        "properties": {"value": _FIELD_VALUE, "state": _STATE},
                                    },
                                },
                            },
                        },
                    },
                },
            },
            "Status": {
                "type": "object",
                "required": [
                    "path",
                    "readings",
                    "bytes",
                    "capacity_bytes",
                    "budget_bytes",
                    "fill_ratio",
                    "devices_with_backlog",
                    "dead_letters",
                    "devices",
                    "runtime",
                ],
                "properties": {
                    "path": {"type": "string"},
                    "readings": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Raw readings buffered (summaries apart)",
                    },
                    "summaries": {
                        "type": "object",
                        "description": "Summaries the compact policy made of older readings, "
                        'buffered, by step ("60s")',
                        "additionalProperties": {"type": "integer", "minimum": 0},
                    },
                    "bytes": {"type": "integer", "minimum": 0},
                    "capacity_bytes": {"type": "integer", "minimum": 0},
                    "budget_bytes": {"type": "integer", "minimum": 0},
                    "fill_ratio": {"type": "number", "minimum": 0},
                    "file_bytes": {"type": "integer", "minimum": 0},
                    "devices_with_backlog": {"type": "integer", "minimum": 0},
                    "dead_letters": {"type": "integer", "minimum": 0},
                    "devices": {"type": "array", "items": {"type": "object"}},
                    "runtime": {
                        "type": "object",
                        "required": [
                            "readings",
                            "lag_s",
                            "batch_size",
                            "sink",
                            "admission",
                            "mqtt_connected",
                        ],
                        "properties": {
                            "readings": {
                                "type": "object",
                                "description": "Readings by outcome since start "
                                "(gateway_readings_total), summarised and suppressed included",
                                "additionalProperties": {"type": "integer", "minimum": 0},
                            },
                            "lag_s": {"type": "number", "minimum": 0},
                            "live_lag_s": {"type": "number", "minimum": 0},
                            "backlog_lag_s": {"type": "number", "minimum": 0},
                            "batch_size": {"type": "integer", "minimum": 1},
                            "last_write_s": {"type": "number", "minimum": 0},
                            "version": {"type": "string"},
                            "sink": {
                                "type": "object",
                                "properties": {
                                    "state": {"type": "string", "enum": ["ok", "failing"]},
                                    "failed_writes_in_a_row": {"type": "integer", "minimum": 0},
                                },
                            },
                            "sinks": {
                                "type": "array",
                                "description": "Each database the buffer drains into, in the "
                                "configured order ([influx] is one sink named influx)",
                                "items": {
                                    "type": "object",
                                    "required": ["name", "state", "lag_s", "backlog_readings"],
                                    "properties": {
                                        "name": {"type": "string"},
                                        "state": {"type": "string", "enum": ["ok", "failing"]},
                                        "failed_writes_in_a_row": {
                                            "type": "integer",
                                            "minimum": 0,
                                        },
                                        "lag_s": {"type": "number", "minimum": 0},
                                        "batch_size": {"type": "integer", "minimum": 1},
                                        "last_write_s": {"type": "number", "minimum": 0},
                                        "backlog_readings": {"type": "integer", "minimum": 0},
                                        "skipped_readings": {"type": "integer", "minimum": 0},
                                    },
                                },
                            },
                            "admission": {"type": "object"},
                            "mqtt_connected": {"type": "boolean"},
                            "loop_lag_max_s": {
                                "type": "number",
                                "minimum": 0,
                                "description": "The event loop's largest lag of the last minute",
                            },
                            "loop_lag_p99_s": {
                                "type": "number",
                                "minimum": 0,
                                "description": "The 99th percentile of its lag over the minute",
                            },
                            "loop_lag_limit_s": {
                                "type": "number",
                                "minimum": 0,
                                "description": "[metrics] max_loop_lag_s: /healthz fails beyond",
                            },
                            "disk": {
                                "type": "object",
                                "description": "Bytes the gateway wrote to storage (absent where "
                                "/proc/self/io is unreadable); null: not known yet",
                                "required": ["written_bytes"],
                                "properties": {
                                    "written_bytes": {"type": "integer", "minimum": 0},
                                    "bytes_per_reading": {
                                        "type": "number",
                                        "nullable": True,
                                        "minimum": 0,
                                        "description": "Since start, per reading accepted",
                                    },
                                    "bytes_per_hour": {
                                        "type": "number",
                                        "nullable": True,
                                        "minimum": 0,
                                    },
                                    "bytes_per_day": {
                                        "type": "number",
                                        "nullable": True,
                                        "minimum": 0,
                                    },
                                    "endurance_remaining_bytes": {
                                        "type": "number",
                                        "nullable": True,
                                        "minimum": 0,
                                    },
                                    "projected_life_days": {
                                        "type": "number",
                                        "nullable": True,
                                        "minimum": 0,
                                        "description": "At the daily rate, until [buffer] "
                                        "endurance_tbw is used (null: not set, no rate yet or "
                                        "nothing written)",
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}
