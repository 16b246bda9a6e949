"""A prototype, not a product path: how fast `tunnelman psql NAME` could be when the agent already
holds NAME's tunnel, if the command skipped click and the modules only a cold start needs.

`python bench/lean_psql.py NAME [PSQL ARGS…]`: load the profile, ask the agent for the port, exec
psql with the PG* settings. Only for profiles whose login needs no secret from tunnelman
(`password = "none"`: libpq reads ~/.pgpass); anything else exits 2. The bench times it next to
the real command to show what the warm-path target would take (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from tunnelman.agent.client import AgentClient
    from tunnelman.core import profiles

    name, args = sys.argv[1], sys.argv[2:]
    profile = profiles.load(None).get(name)
    status = AgentClient().find(name)
    if profile.password != "none" or status is None or status.local_port is None:
        sys.exit(2)
    env = dict(os.environ)
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(status.local_port),
        PGUSER=profile.user,
        PGDATABASE=profile.database,
        PGSSLMODE=profile.sslmode,
    )
    os.execvpe("psql", ["psql", *args], env)  # noqa: S606 - replaces this process, no shell


if __name__ == "__main__":
    main()
