"""`python -m tunnelman.agent`: the background agent, as clients start it (see `server`)."""

from __future__ import annotations

import sys

from tunnelman.agent.server import main

if __name__ == "__main__":
    sys.exit(main())
