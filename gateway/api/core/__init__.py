"""Pure checks of an HTTP request's headers: the Host allow-list and the Authorization header.

What it promises: values in, decisions out; nothing here reads a socket or imports aiohttp.
May import: nothing of the gateway's I/O.
"""
