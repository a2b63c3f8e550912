"""The configuration: one pydantic model per section, and its loading from TOML and the environment.

What it does: validates `gateway.toml` with messages that name the key (`loader`), holds every
default (`mqtt`, `sections`, `sinks`, `settings`), resolves each database's pace (`sinks`), and
says which keys a SIGHUP may change (`reload`).
Promises: every default is defined here and only here; secrets never come from the file.
May import: `gateway.errors`, `gateway.points`. Pure: no I/O library.
"""
