"""The "before" column of the bench: sshtunnel 0.5.1 as a library user would run it.

`python bench/stock_sshtunnel.py SSH_HOST SSH_PORT USER KEY DEST_HOST DEST_PORT LOCAL_PORT`:
an `SSHTunnelForwarder` with its own defaults (16 KiB select relay, paramiko's default cipher
order), bound to 127.0.0.1, until SIGTERM. Prints "ready" once it listens. No host key check:
this is the library as-is, for comparison only; tunnelman never runs it.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading


def main() -> None:
    import sshtunnel

    ssh_host, ssh_port, user, key, dest_host, dest_port, local_port = sys.argv[1:8]
    logger = logging.getLogger("stock-sshtunnel")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    server = sshtunnel.SSHTunnelForwarder(
        (ssh_host, int(ssh_port)),
        ssh_username=user,
        ssh_pkey=key,
        ssh_config_file=None,
        allow_agent=False,
        host_pkey_directories=[],
        local_bind_address=("127.0.0.1", int(local_port)),
        remote_bind_address=(dest_host, int(dest_port)),
        logger=logger,
    )
    server.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    server.stop(force=True)


if __name__ == "__main__":
    main()
