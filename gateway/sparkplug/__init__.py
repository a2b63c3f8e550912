"""Sparkplug B: edge nodes' protobuf payloads, their alias maps kept durably, rebirth requests.

`core/` is pure: the payload's message definitions (core/sparkplug_b.proto and the module
protoc generated from it), metric values (core/payload.py), topics (core/topic.py) and the state
of every edge node and device (core/session.py). The decoder (gateway/ingest/core/decode.py)
turns what the state resolves into readings; the committer stores the state's changes as notes
in the same LMDB transaction as the readings of the message that changed it, and publishes the
rebirth requests after that commit.
"""
