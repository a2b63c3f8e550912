"""A standby gateway holding a replica of the primary's buffer, shipped through the broker."""
