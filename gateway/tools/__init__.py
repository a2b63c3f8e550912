"""Tools beside the product: benchmark, demo, sensor simulator, load generator, local servers.

The runtime never imports them; only the command line does, to start them (tests/unit/
test_layout.py holds both to that). May import anything in the package.
"""
