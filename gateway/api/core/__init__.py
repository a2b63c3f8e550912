"""The HTTP API's pure core: request-header checks, miss query text and cache, device pages.

What it promises: values in, decisions out; nothing here reads a socket or imports aiohttp.
May import: config, points, errors. No I/O library.
"""
