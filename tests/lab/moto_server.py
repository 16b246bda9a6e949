"""A moto AWS server on loopback, for boto3 code under test (RDS, EC2, Secrets Manager …).

``MotoServer`` wraps ``moto.server.ThreadedMotoServer`` on ``127.0.0.1:<kernel-chosen
port>`` inside the test process.  ``env()`` is the environment that points boto3 at it with
dummy credentials (``AWS_ENDPOINT_URL`` is honoured by boto3 ≥ 1.28); ``reset()`` wipes all
state between tests (``POST /moto-api/reset``).  ``geo_cluster`` seeds the small Aurora
PostgreSQL cluster the discover tests look for.
"""

from __future__ import annotations

import urllib.request
from types import TracebackType
from typing import Any, Self

from tests.lab import procs
from tests.lab.ports import wait_port

__all__ = ["REGION", "MotoServer", "geo_cluster", "moto_missing"]

REGION = "us-east-2"


def geo_cluster(rds: Any, subnet_ids: list[str]) -> None:
    """Aurora PostgreSQL cluster "geo" in a subnet group "geo-subnets" of `subnet_ids`."""
    rds.create_db_subnet_group(
        DBSubnetGroupName="geo-subnets", DBSubnetGroupDescription="geo", SubnetIds=subnet_ids
    )
    rds.create_db_cluster(
        DBClusterIdentifier="geo",
        Engine="aurora-postgresql",
        MasterUsername="postgres",
        MasterUserPassword="geo-password-1",
        DBSubnetGroupName="geo-subnets",
    )


def moto_missing() -> str | None:
    """A reason why no moto server can run here, or None."""
    try:
        import moto.server  # noqa: F401
    except ImportError as e:
        return f"moto[server] not installed ({e})"
    return None


class MotoServer:
    """A threaded moto server; ``start()``/``stop()`` or use as a context manager."""

    def __init__(self, host: str = "127.0.0.1", region: str = REGION) -> None:
        self.host = host
        self.region = region
        self.port = 0
        self._server: Any = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self._server is not None:
            return
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        server.start()
        self._server = server
        procs.on_exit(self.stop)
        self.port = int(server.get_host_and_port()[1])
        wait_port(self.host, self.port, timeout=10)

    def stop(self) -> None:
        procs.on_exit_cancel(self.stop)
        server, self._server = self._server, None
        if server is not None:
            server.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._server is None:
            raise RuntimeError("moto server not started")
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing boto3 (and the AWS CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def reset(self) -> None:
        """Forget every resource created so far."""
        req = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
