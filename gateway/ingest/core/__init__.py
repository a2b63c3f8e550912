"""Ingest's pure core: payload and topic to readings, for the formats `json`, `line` and `value`.

Promises: nothing a sensor sends raises out of `Decoder.decode`; every problem is a counted
`DecodeError`. May import: config, points, errors. No I/O library.
"""
