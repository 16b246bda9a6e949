"""A STAND-IN for the Systems Manager API calls moto lacks, for tests only: not AWS, no AWS involved.

moto implements neither StartSession nor DescribeInstanceInformation (nor TerminateSession), so
a test whose AWS calls happen in another process (the CLI, the agent) cannot answer them with
botocore's Stubber. `SsmFront` is an HTTP server on loopback speaking SSM's JSON protocol
(`POST /`, `X-Amz-Target: AmazonSSM.<Operation>`, `application/x-amz-json-1.1`) that answers those
three itself, with the real API's response shapes:

- StartSession: `SessionId`, `TokenValue`, `StreamUrl` (a `wss://ssmmessages.REGION…` URL, as AWS
  gives; the stand-in plugin reads these and relays to the lab's servers instead);
- DescribeInstanceInformation: `InstanceInformationList` with `InstanceId`, `PingStatus`,
  `LastPingDateTime` (epoch seconds, as the JSON protocol sends timestamps), `AgentVersion`,
  `IsLatestVersion`, `PlatformType`, `PlatformName`, `PlatformVersion`, `ResourceType`,
  `IPAddress`, `ComputerName`, honouring the `InstanceIds` and `PingStatus` filters
  (Filters or InstanceInformationFilterList);
- TerminateSession: `SessionId`.

Every other request is passed to moto unchanged (moto checks nothing of the signature; the front
does not either). Point botocore at it with AWS_ENDPOINT_URL_SSM (botocore honours it; the agent
inherits the CLI's environment). It records what it was asked (`calls`: operation + request
body) so tests can assert on the target, document and parameters. `instances` says which
instances are managed and their ping status; a StartSession for another one is answered
`TargetNotConnected` (HTTP 400), as AWS does. `deny = {"StartSession"}` answers that call
`AccessDeniedException` naming the action.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["ManagedInstance", "SsmCall", "SsmFront"]

ANSWERED = ("StartSession", "DescribeInstanceInformation", "TerminateSession")


@dataclass
class ManagedInstance:
    """One SSM-managed instance as DescribeInstanceInformation reports it."""

    instance_id: str
    ping_status: str = "Online"
    agent_version: str = "3.3.1142.0"
    platform_name: str = "Amazon Linux"
    platform_version: str = "2023"
    ip_address: str = "10.7.1.10"


@dataclass(frozen=True)
class SsmCall:
    """One request the front answered itself: the operation and its JSON body."""

    operation: str
    body: dict[str, Any]


class SsmFront:
    """SSM's JSON API: StartSession, DescribeInstanceInformation and TerminateSession answered
    here (see the module docstring), the rest passed to moto."""

    def __init__(self, moto_url: str, region: str, instances: list[ManagedInstance]) -> None:
        self.moto_url = moto_url
        self.region = region
        self.instances = list(instances)
        self.deny: set[str] = set()
        self.calls: list[SsmCall] = []
        self._lock = threading.Lock()
        self._count = 0
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target") or ""
                service, _, operation = target.partition(".")
                if service == "AmazonSSM" and operation in ANSWERED:
                    status, answer = front._answer(operation, json.loads(body or b"{}"))
                    kind = "application/x-amz-json-1.1"
                else:
                    status, answer, kind = front._forward(self.path, body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(answer)))
                self.send_header("x-amzn-RequestId", "0a1b2c3d-ssm-front-stand-in")
                self.end_headers()
                self.wfile.write(answer)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL_SSM": self.url}

    def __enter__(self) -> SsmFront:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def asked(self, operation: str) -> list[dict[str, Any]]:
        """The bodies of every `operation` request so far."""
        with self._lock:
            return [c.body for c in self.calls if c.operation == operation]

    # ------------------------------------------------------------------ moto

    def _forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(
            self.moto_url + path, data=body, headers=keep, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                kind = resp.headers.get("Content-Type") or "application/x-amz-json-1.1"
                return int(resp.status), bytes(resp.read()), kind
        except urllib.error.HTTPError as exc:
            kind = exc.headers.get("Content-Type") or "application/x-amz-json-1.1"
            return int(exc.code), bytes(exc.read()), kind

    # ------------------------------------------------------------------ the missing calls

    def _answer(self, operation: str, body: dict[str, Any]) -> tuple[int, bytes]:
        with self._lock:
            self.calls.append(SsmCall(operation, body))
        if operation in self.deny:
            return self._error(
                400,
                "AccessDeniedException",
                "User: arn:aws:iam::123456789012:user/ana is not authorized to perform: "
                f"ssm:{operation} on resource: arn:aws:ec2:{self.region}:123456789012:instance/"
                f"{body.get('Target', '*')} because no identity-based policy allows the "
                f"ssm:{operation} action",
            )
        if operation == "StartSession":
            return self._start(body)
        if operation == "DescribeInstanceInformation":
            return self._describe(body)
        return 200, json.dumps({"SessionId": body.get("SessionId", "")}).encode()

    def _error(self, status: int, code: str, message: str) -> tuple[int, bytes]:
        return status, json.dumps({"__type": code, "message": message}).encode()

    def _start(self, body: dict[str, Any]) -> tuple[int, bytes]:
        target = str(body.get("Target", ""))
        known = {i.instance_id: i for i in self.instances}
        if target not in known or known[target].ping_status != "Online":
            return self._error(400, "TargetNotConnected", f"{target} is not connected.")
        with self._lock:
            self._count += 1
            n = self._count
        session_id = f"ana-{n:03d}0f3c1d2e4b5a6978"
        return 200, json.dumps(
            {
                "SessionId": session_id,
                "TokenValue": f"AAEAAStandInSessionToken{n:03d}NotReal=",
                "StreamUrl": (
                    f"wss://ssmmessages.{self.region}.amazonaws.com/v1/data-channel/"
                    f"{session_id}?role=publish_subscribe&cell-number=AAEAAQ"
                ),
            }
        ).encode()

    def _describe(self, body: dict[str, Any]) -> tuple[int, bytes]:
        wanted: dict[str, list[str]] = {}
        for item in body.get("Filters") or []:
            wanted[str(item.get("Key"))] = list(item.get("Values") or [])
        for item in body.get("InstanceInformationFilterList") or []:
            wanted[str(item.get("key"))] = list(item.get("valueSet") or [])
        now = time.time()
        infos = [
            {
                "InstanceId": i.instance_id,
                "PingStatus": i.ping_status,
                "LastPingDateTime": now - (5 if i.ping_status == "Online" else 7200),
                "AgentVersion": i.agent_version,
                "IsLatestVersion": True,
                "PlatformType": "Linux",
                "PlatformName": i.platform_name,
                "PlatformVersion": i.platform_version,
                "ResourceType": "EC2Instance",
                "IPAddress": i.ip_address,
                "ComputerName": f"ip-{i.ip_address.replace('.', '-')}.ec2.internal",
                "AssociationStatus": "Success",
                "SourceId": i.instance_id,
                "SourceType": "AWS::EC2::Instance",
            }
            for i in self.instances
            if i.instance_id in wanted.get("InstanceIds", [i.instance_id])
            and i.ping_status in wanted.get("PingStatus", [i.ping_status])
        ]
        return 200, json.dumps({"InstanceInformationList": infos}).encode()
