"""The flusher's pure core: coalescing a batch, and the batch-size controller.

May import: config, points, errors. No I/O library.
"""
