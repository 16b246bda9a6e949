"""A STAND-IN for AWS's `session-manager-plugin`, for tests only: not AWS's plugin, no AWS involved.

AWS's plugin needs the real Systems Manager service (it opens the session's websocket to
ssmmessages.REGION.amazonaws.com), which cannot run here. This stand-in takes the same argv as
the real one is given by the AWS CLI v2 and by tunnelman:

    session-manager-plugin AWS_SSM_START_SESSION_RESPONSE REGION StartSession PROFILE REQUEST_JSON ENDPOINT

reads the StartSession response (session id, token, stream URL) from the environment variable
named by the first argument, as the real plugin does, checks what it was given, appends it to the
JSON-lines file `$STANDIN_SSM_RECORD` (argv, the response it read, its pid), and then does what
the instance's SSM agent would do, with real sockets to the lab's real servers:

- `AWS-StartSSHSession`: prints the real plugin's "Starting session with SessionId" line, then
  relays its stdin/stdout to 127.0.0.1:portNumber (the lab's sshd);
- `AWS-StartPortForwardingSessionToRemoteHost`: listens on 127.0.0.1:localPortNumber and relays
  each connection to host:portNumber (the lab's PostgreSQL).

`$STANDIN_SSM_TERMINATE=PATH`: the session is ended on "AWS's side" when the plugin is told to
stop (SIGTERM), as the real plugin does, and, for AWS-StartSSHSession, when the instance's sshd
closes the stream, as the instance's agent does: TerminateSession is called at the endpoint in its
argv (boto3, the environment's credentials; the tests' SSM front records it) and `{"pid",
"session", "ended": "sigterm" | "remote closed"}` appended to PATH. A SIGKILLed plugin ends
nothing: its session stays open on AWS until the idle timeout.
`$STANDIN_SSM_FAIL`: print it on stderr and exit 1 (a session the real plugin cannot open).
`--version` prints a version line. Exit status 2 for input the real plugin would refuse.
Used by tests/test_transport_ssm.py through a `session-manager-plugin` wrapper on PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from typing import Any, NoReturn

VERSION = "1.2.0.0-standin"


def _fail(message: str) -> NoReturn:
    print(f"stand-in session-manager-plugin: {message}", file=sys.stderr)
    sys.exit(2)


def _record(entry: dict[str, Any]) -> None:
    path = os.environ.get("STANDIN_SSM_RECORD")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def _copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


_ENDING = threading.Lock()
_SESSION: dict[str, str] = {}


def _end_session(reason: str) -> None:
    """End the session on AWS's side (see the module docstring), then exit."""
    record = os.environ.get("STANDIN_SSM_TERMINATE")
    if record and not _ENDING.acquire(blocking=False):
        _ENDING.acquire()  # another thread is ending it: let it finish (it exits)
    if record:
        try:
            import boto3

            client = boto3.client(
                "ssm", region_name=_SESSION["region"], endpoint_url=_SESSION["endpoint"]
            )
            client.terminate_session(SessionId=_SESSION["id"])
            with open(record, "a", encoding="utf-8") as f:
                entry = {"pid": os.getpid(), "session": _SESSION["id"], "ended": reason}
                f.write(json.dumps(entry) + "\n")
        except Exception as exc:  # the real plugin exits even when the call fails
            print(f"TerminateSession failed: {exc}", file=sys.stderr)
    os._exit(0)


def _terminate_on_sigterm(region: str, endpoint: str, session_id: str) -> None:
    import signal

    _SESSION.update(region=region, endpoint=endpoint, id=session_id)

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not re-enter
        _end_session("sigterm")

    signal.signal(signal.SIGTERM, on_sigterm)


def _ssh_session(port: int, session_id: str) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    stdout = sys.stdout.buffer
    # AWS's plugin says this on stdout before the stream's bytes (SSH clients skip lines
    # before the server's "SSH-2.0-" banner, as RFC 4253 allows).
    stdout.write(f"\nStarting session with SessionId: {session_id}\n".encode())
    stdout.flush()

    def down() -> None:
        try:
            while data := sock.recv(65536):
                stdout.write(data)
                stdout.flush()
        except OSError:
            pass
        _end_session("remote closed")  # the instance's sshd closed: the session ends

    threading.Thread(target=down, daemon=True).start()
    fd = sys.stdin.fileno()
    try:
        while data := os.read(fd, 65536):
            sock.sendall(data)
    except OSError:
        pass
    os._exit(0)


def _port_session(local_port: int, host: str, port: int, session_id: str) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", local_port))
    listener.listen(16)
    print(f"\nStarting session with SessionId: {session_id}", flush=True)
    print(f"Port {local_port} opened for sessionId {session_id}.", flush=True)
    print("Waiting for connections...", flush=True)
    while True:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection((host, port), timeout=5)
        except OSError as exc:
            # As the instance's agent does: this connection ends, the session goes on.
            print(
                f"Connection to destination port failed, check SSM Agent logs: {exc}",
                file=sys.stderr,
            )
            client.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_copy, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> None:
    if argv[1:] == ["--version"]:
        print(VERSION)
        return
    if len(argv) != 7:
        _fail(f"expected 6 arguments, got {len(argv) - 1}")
    env_name, region, operation, profile, request_json, endpoint = argv[1:]
    if operation != "StartSession":
        _fail(f"unknown operation {operation}")
    raw = (
        os.environ.pop(env_name, None)
        if env_name.startswith("AWS_SSM_START_SESSION_RESPONSE")
        else env_name
    )
    if raw is None:
        _fail(f"no {env_name} in the environment")
    response = json.loads(raw)
    request = json.loads(request_json)
    for key in ("SessionId", "TokenValue", "StreamUrl"):
        if not response.get(key):
            _fail(f"the StartSession response has no {key}")
    document = request.get("DocumentName")
    params = request.get("Parameters") or {}
    _record(
        {
            "pid": os.getpid(),
            "argv": argv[1:],
            "response_env": env_name,
            "response": response,
            "region": region,
            "profile": profile,
            "endpoint": endpoint,
            "target": request.get("Target"),
            "document": document,
            "parameters": params,
        }
    )
    failure = os.environ.get("STANDIN_SSM_FAIL")
    if failure:  # what the real plugin says when the websocket cannot be opened, then exit 1
        print(failure, file=sys.stderr)
        sys.exit(1)
    if os.environ.get("STANDIN_SSM_TERMINATE"):
        _terminate_on_sigterm(region, endpoint, response["SessionId"])
    if document == "AWS-StartSSHSession":
        _ssh_session(int(params["portNumber"][0]), response["SessionId"])
    elif document == "AWS-StartPortForwardingSessionToRemoteHost":
        _port_session(
            int(params["localPortNumber"][0]),
            params["host"][0],
            int(params["portNumber"][0]),
            response["SessionId"],
        )
    else:
        _fail(f"document {document} is not what tunnelman sends")


if __name__ == "__main__":
    main(sys.argv)
