"""The HTTP API's pure core: request-header checks, query text for a miss, the negative cache,
pages of devices.

What it promises: values in, decisions out; nothing here reads a socket or imports aiohttp.
May import: config, points, errors. No I/O library.
"""
