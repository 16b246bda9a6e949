"""The background agent: one process per user holding long-lived tunnels, and its client.

`server` is the process (started as `python -m tunnelman.agent`), `client.AgentClient` is how the
CLI and the TUI talk to it, `protocol` is the JSON-lines wire format between them, `paths` and
`locks` are where it lives and how one agent per user is guaranteed. Importing this package is
free: one-shot commands import `client` on every run.
"""
