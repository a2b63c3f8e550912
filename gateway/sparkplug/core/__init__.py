"""Pure Sparkplug B logic: payloads, topics, and the state of edge nodes and devices."""
