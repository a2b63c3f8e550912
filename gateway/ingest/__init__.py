"""Ingest: MQTT messages in, decoded readings into the buffer, PUBACKs out after the commit.

What it does: connects and consumes (`intake`), takes each message with whatever it raises
contained (`taking`), commits a group and then acknowledges it (`commit`), sets aside a message
that killed the gateway twice (`breaker`); `mqtt` is the one adapter around aiomqtt and paho;
`core/` decodes payloads and topics and cuts MQTT packets out of bytes, without I/O.
Promises: ack after persist (DESIGN invariant 1); no message stops the gateway (invariant 8).
May import: the buffer, observe, config, points, errors, backoff, tls. Never flush, api,
service or tools.
"""
