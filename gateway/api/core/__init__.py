"""The read API's pure core: query text for a miss, the negative cache, pages of devices.

May import: config, points, errors. No I/O library.
"""
