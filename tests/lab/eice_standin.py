"""A STAND-IN for an EC2 Instance Connect Endpoint, and for the EC2 calls moto lacks.

The real endpoint is an AWS service; nothing on this machine can be it. `EiceStandIn` plays its
part on loopback so the rest of the eice path is real: a TLS websocket server (a certificate for
the endpoint's DNS name from a test CA, trusted by the client through SSL_CERT_FILE) that checks
what the client gives it as the endpoint would (path /openTunnel; instanceConnectEndpointId,
remotePort=22, privateIpAddress, maxTunnelDuration; the SigV4 query parameters X-Amz-Algorithm,
-Credential, -Date, -Expires, -SignedHeaders, -Security-Token and -Signature, the signature
recomputed here from the credentials with hashlib/hmac, independently of botocore) and then relays
binary frames to a real TCP server (the lab's sshd), as the endpoint relays to the instance's
port 22. A request that fails a check is answered 403, as AWS does; `refuse = STATUS` answers
every request with that status. `drop()` cuts every open tunnel (the endpoint's 1-hour cap, or a
crash); `stop()` / `start()` take it away and bring it back on the same port.

`Ec2Front` is a stand-in for EC2's query API for the one call moto does not implement,
DescribeInstanceConnectEndpoints (answered in AWS's XML shape, honouring the vpc-id and state
filters); every other request is passed to moto unchanged. Point botocore at it with
AWS_ENDPOINT_URL_EC2. It can also refuse that call (`deny = True`: UnauthorizedOperation).
Pointed at by AWS_ENDPOINT_URL_EC2_INSTANCE_CONNECT too, it passes SendSSHPublicKey to moto and,
when moto accepted it, hands the key to `on_key` (the test authorises it on the lab's sshd): a
stand-in for the instance's Instance Connect agent, which moto cannot be.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import http.server
import json
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.lab.ports import free_port
from tests.lab.postgres import make_ca, make_server_cert

SERVICE = "ec2-instance-connect"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class Seen:
    """What one request to the stand-in carried (query parameters, Host header) and its verdict."""

    params: dict[str, str]
    host: str
    problems: list[str]


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def sigv4_problems(
    path: str,
    params: dict[str, str],
    host: str,
    *,
    access_key: str,
    secret_key: str,
    token: str | None,
    region: str,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Why a presigned GET is not valid for these credentials (empty: it is), per the SigV4 spec."""
    problems: list[str] = []
    for name in (
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ):
        if name not in params:
            problems.append(f"{name} missing")
    if problems:
        return problems
    if params["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        problems.append(f"X-Amz-Algorithm {params['X-Amz-Algorithm']}")
    stamp = params["X-Amz-Date"]
    day = stamp[:8]
    scope = f"{day}/{region}/{SERVICE}/aws4_request"
    if params["X-Amz-Credential"] != f"{access_key}/{scope}":
        problems.append(
            f"X-Amz-Credential {params['X-Amz-Credential']} (wanted {access_key}/{scope})"
        )
    if token is not None and params.get("X-Amz-Security-Token") != token:
        problems.append("X-Amz-Security-Token missing or wrong")
    if params["X-Amz-SignedHeaders"] != "host":
        problems.append(f"X-Amz-SignedHeaders {params['X-Amz-SignedHeaders']}")
    signed_at = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    expires = int(params["X-Amz-Expires"])
    if expires > 60:
        problems.append(f"X-Amz-Expires {expires} (the AWS CLI signs for 60 s)")
    if (
        not signed_at - datetime.timedelta(seconds=300)
        <= now
        <= signed_at + datetime.timedelta(seconds=expires)
    ):
        problems.append("the signed URL has expired")
    query = "&".join(
        f"{_quote(k)}={_quote(v)}" for k, v in sorted(params.items()) if k != "X-Amz-Signature"
    )
    canonical = "\n".join(["GET", path, query, f"host:{host}", "", "host", _EMPTY_SHA256])
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    wanted = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(wanted, params["X-Amz-Signature"]):
        problems.append("X-Amz-Signature does not match (SignatureDoesNotMatch)")
    return problems


@dataclass
class EiceStandIn:
    """The stand-in endpoint (see the module docstring). `connect` is the value for
    TUNNELMAN_EICE_CONNECT, `ca_file` the CA to trust (SSL_CERT_FILE)."""

    directory: Path
    relay_to: tuple[str, int]
    endpoint_id: str
    dns_name: str
    private_ip: str
    region: str
    access_key: str = "testing"
    secret_key: str = "testing"
    token: str | None = "testing"
    refuse: int | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: Any = None
    _thread: threading.Thread | None = None
    _live: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        ca_cert, ca_key = make_ca(self.directory, "tunnelman test CA (EICE stand-in)")
        self.ca_file = ca_cert
        self.cert, self.key = make_server_cert(
            # The first name is also the CN, at most 64 characters: a short one, then the real one.
            self.directory,
            ca_cert,
            ca_key,
            ["eice-stand-in", self.dns_name],
        )
        self.port = free_port()

    @property
    def connect(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {"TUNNELMAN_EICE_CONNECT": self.connect, "SSL_CERT_FILE": str(self.ca_file)}

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        from websockets.sync.server import serve

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        self._server = serve(
            self._handle,
            "127.0.0.1",
            self.port,
            ssl=context,
            process_request=self._check,
            compression=None,
            max_size=None,
            server_header="EICE stand-in (tunnelman tests)",
        )
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def drop(self) -> None:
        """Cut every open tunnel abruptly (TCP closed under the websocket)."""
        with self._lock:
            live, self._live = self._live, []
        for conn in live:
            with contextlib.suppress(Exception):
                conn.socket.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                conn.socket.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.drop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> EiceStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live)

    # ------------------------------------------------------------------ the endpoint's part

    def _check(self, connection: Any, request: Any) -> Any:
        parts = urllib.parse.urlsplit(request.path)
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        host = str(request.headers.get("Host", ""))
        problems: list[str] = []
        if parts.path != "/openTunnel":
            problems.append(f"path {parts.path}")
        if host != self.dns_name:
            problems.append(f"Host {host} (wanted {self.dns_name})")
        wanted = {
            "instanceConnectEndpointId": self.endpoint_id,
            "remotePort": "22",
            "privateIpAddress": self.private_ip,
            "maxTunnelDuration": "3600",
        }
        for name, value in wanted.items():
            if params.get(name) != value:
                problems.append(f"{name}={params.get(name)!r} (wanted {value!r})")
        problems += sigv4_problems(
            parts.path,
            params,
            host,
            access_key=self.access_key,
            secret_key=self.secret_key,
            token=self.token,
            region=self.region,
        )
        self.seen.append(Seen(params=params, host=host, problems=problems))
        if self.refuse is not None:
            return connection.respond(self.refuse, f"refused by the stand-in ({self.refuse})\n")
        if problems:
            return connection.respond(403, "; ".join(problems) + "\n")
        return None

    def _handle(self, ws: Any) -> None:
        try:
            upstream = socket.create_connection(self.relay_to, timeout=5)
        except OSError:
            ws.close(1011, "cannot reach the instance")
            return
        upstream.settimeout(None)
        with self._lock:
            self._live.append(ws)

        def down() -> None:
            try:
                while True:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    ws.send(data)
            except Exception:
                pass
            finally:
                with contextlib.suppress(Exception):
                    ws.close()

        pump = threading.Thread(target=down, daemon=True)
        pump.start()
        try:
            for message in ws:
                if isinstance(message, str):
                    break
                upstream.sendall(message)
        except Exception:
            pass
        finally:
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)
            upstream.close()
            pump.join(timeout=5)
            with self._lock:
                if ws in self._live:
                    self._live.remove(ws)


# ----------------------------------------------------------------------------- EC2's missing call


@dataclass
class FrontEndpoint:
    id: str
    dns_name: str
    vpc_id: str
    subnet_id: str
    state: str = "create-complete"


class Ec2Front:
    """EC2's query API: DescribeInstanceConnectEndpoints answered here, the rest passed to moto."""

    def __init__(self, moto_url: str, endpoints: Sequence[FrontEndpoint] = ()) -> None:
        self.moto_url = moto_url
        self.endpoints = list(endpoints)
        self.deny = False
        self.calls: list[dict[str, list[str]]] = []
        self.on_key: Callable[[dict[str, Any]], None] | None = None
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = urllib.parse.parse_qs(body.decode())
                target = self.headers.get("X-Amz-Target") or ""
                if target.endswith(".SendSSHPublicKey"):
                    status, answer = front._forward(self.path, body, dict(self.headers))
                    if status == 200 and front.on_key is not None:
                        front.on_key(json.loads(body))
                elif form.get("Action") == ["DescribeInstanceConnectEndpoints"]:
                    front.calls.append(form)
                    status, answer = front._describe(form)
                else:
                    status, answer = front._forward(self.path, body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Ec2Front:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        keep = {k: v for k, v in headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(
            self.moto_url + path, data=body, headers=keep, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def _describe(self, form: dict[str, list[str]]) -> tuple[int, bytes]:
        if self.deny:
            return 403, (
                b"<?xml version='1.0' encoding='UTF-8'?><Response><Errors><Error>"
                b"<Code>UnauthorizedOperation</Code><Message>You are not authorized to perform "
                b"this operation. User: arn:aws:iam::123456789012:user/ana is not authorized to "
                b"perform: ec2:DescribeInstanceConnectEndpoints</Message></Error></Errors>"
                b"<RequestID>stand-in</RequestID></Response>"
            )
        filters: dict[str, list[str]] = {}
        index = 1
        while f"Filter.{index}.Name" in form:
            name = form[f"Filter.{index}.Name"][0]
            values = [
                v[0] for k, v in sorted(form.items()) if k.startswith(f"Filter.{index}.Value.")
            ]
            filters[name] = values
            index += 1
        chosen = [
            e
            for e in self.endpoints
            if ("vpc-id" not in filters or e.vpc_id in filters["vpc-id"])
            and ("state" not in filters or e.state in filters["state"])
        ]
        items = "".join(
            "<item>"
            "<ownerId>123456789012</ownerId>"
            f"<instanceConnectEndpointId>{e.id}</instanceConnectEndpointId>"
            f"<instanceConnectEndpointArn>arn:aws:ec2:us-east-1:123456789012:"
            f"instance-connect-endpoint/{e.id}</instanceConnectEndpointArn>"
            f"<state>{e.state}</state><stateMessage/>"
            f"<dnsName>{e.dns_name}</dnsName>"
            f"<fipsDnsName>fips.{e.dns_name}</fipsDnsName>"
            "<networkInterfaceIdSet><item>eni-0a1b2c3d4e5f67890</item></networkInterfaceIdSet>"
            f"<vpcId>{e.vpc_id}</vpcId><availabilityZone>us-east-1a</availabilityZone>"
            f"<createdAt>{time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime())}</createdAt>"
            f"<subnetId>{e.subnet_id}</subnetId><preserveClientIp>false</preserveClientIp>"
            "<securityGroupIdSet><item>sg-0a1b2c3d4e5f67890</item></securityGroupIdSet>"
            "<tagSet/>"
            "</item>"
            for e in chosen
        )
        return 200, (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<DescribeInstanceConnectEndpointsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
            "<requestId>0a1b2c3d-stand-in</requestId>"
            f"<instanceConnectEndpointSet>{items}</instanceConnectEndpointSet>"
            "</DescribeInstanceConnectEndpointsResponse>"
        ).encode()
