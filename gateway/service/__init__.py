"""The service: wiring and lifecycle, the parent of workers, systemd, logging, CLI commands.

What it does: starts the stages in order and stops them in reverse (`lifecycle`), reloads on
SIGHUP (`reloading`), runs worker processes in a shared subscription (`supervisor`, `children`,
`workers`, `workerapi`), talks to systemd (`sdnotify`), logs for journald (`logsetup`), does
the periodic chores (`housekeeping`), and serves the `status`, `verify-buffer` and
`dead-letters` commands. May import every stage beneath it. Never tools.
"""
