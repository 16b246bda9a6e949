"""The `tunnelman demo` sandbox: an in-process bastion, a throwaway PostgreSQL, and their wiring.

`bastion` (an SSH server on 127.0.0.1, also used by tests), `database` (a private PostgreSQL for
the demo) and `sandbox` (starts both, writes a temporary profile, removes everything on exit).
Nothing else in tunnelman imports this package; the CLI imports it only for `tunnelman demo`.
"""

from __future__ import annotations

from tunnelman.core.errors import TunnelmanError


class DemoError(TunnelmanError):
    """The sandbox could not be set up: no PostgreSQL to run, a failed start, a profile clash."""
