"""`tunnelman up` as a user runs it: the real command in a subprocess against the real lab.

Without a terminal (stdin from /dev/null) for the refusals and scripted runs; on a real
pseudo-terminal (controlling tty, so getpass hides input) for the host-key and passphrase prompts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import TUNNELMAN, run_cli
from tests.conftest import LabProfile
from tests.lab.keys import fingerprint, make_key
from tests.lab.profiles import PTS, query
from tests.lab.sshd import Sshd
from tests.test_tunnel import closed_port, listening_addresses, non_loopback_address

FAST = 15.0


def run(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """`run_cli(ARGS)` (no terminal); (result, elapsed seconds)."""
    result = run_cli(*args, timeout=timeout)
    return result, result.elapsed


class Up:
    """`tunnelman up …` in the background with pipes; wait for the "is up" line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*TUNNELMAN, "up", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        self.stdout: list[str] = []

    def wait_up(self, timeout: float = 20) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.stdout.append(line)
                if "is up" in line:
                    # the psql line follows at once
                    self.stdout.append(self.proc.stdout.readline())
                    return "".join(self.stdout)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"not up: {''.join(self.stdout)} {err}")

    def finish(self, sig: int = signal.SIGINT, timeout: float = 10) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.stdout) + out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@contextlib.contextmanager
def up(*args: str) -> Iterator[Up]:
    proc = Up(*args)
    try:
        yield proc
    finally:
        proc.kill()


class Pty:
    """A command on a real pseudo-terminal that is its controlling terminal."""

    def __init__(self, argv: list[str]) -> None:
        self.master, slave = os.openpty()

        def become_tty_owner() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=os.environ.copy(),
            preexec_fn=become_tty_owner,  # noqa: PLW1509 - the test needs a controlling tty
            close_fds=True,
        )
        os.close(slave)
        self.output = ""

    def expect(self, pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {pattern!r} in {self.output!r}")
            ready, _, _ = select.select([self.master], [], [], min(remaining, 0.2))
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                if not chunk:
                    if self.proc.poll() is not None:
                        raise AssertionError(f"exited; no {pattern!r} in {self.output!r}")
                    continue
                self.output += chunk.decode(errors="replace")
        return self.output

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):
                    self.output += os.read(self.master, 4096).decode(errors="replace")
        code = self.proc.wait(timeout=1)
        with contextlib.suppress(OSError):
            while select.select([self.master], [], [], 0.05)[0]:
                chunk = os.read(self.master, 4096)
                if not chunk:
                    break
                self.output += chunk.decode(errors="replace")
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.master)


@pytest.fixture
def pty_run() -> Iterator[Any]:
    made: list[Pty] = []

    def start(*args: str) -> Pty:
        p = Pty([*TUNNELMAN, *args])
        made.append(p)
        return p

    yield start
    for p in made:
        p.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def errline(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("tunnelman: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


# ----------------------------------------------------------------------------- the happy path


def test_up_listens_on_loopback_serves_rows_and_ctrl_c_closes(lab_profile: LabProfile) -> None:
    port = closed_port()
    with up("lab", "--port", str(port)) as proc:
        stdout = proc.wait_up()
        assert f"127.0.0.1:{port}" in stdout
        assert f'psql "host=127.0.0.1 port={port} dbname=geo user=postgres sslmode=prefer' in stdout
        assert listening_addresses(port) == {"0100007F"}
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((other, port), timeout=2).close()
        assert query(port, lab_profile.postgres, PTS) == 4
        code, out, err = proc.finish(signal.SIGINT)
    assert code == 0
    assert "Connecting to bastion" in err
    assert f"Closed the tunnel on 127.0.0.1:{port}." in err
    assert lab_profile.password not in out + err
    no_traceback(out, err)
    assert refused(port)


def test_sigterm_closes_cleanly_too(lab_profile: LabProfile) -> None:
    with up("lab", "--port", "0") as proc:
        stdout = proc.wait_up()
        match = re.search(r"127\.0\.0\.1:(\d+)", stdout)
        assert match
        port = int(match.group(1))
        assert query(port, lab_profile.postgres, PTS) == 4
        code, _out, err = proc.finish(signal.SIGTERM)
    assert code == 0
    assert "Closed the tunnel" in err
    assert refused(port)


def test_port_from_the_profile(lab_profile: LabProfile) -> None:
    port = closed_port()
    lab_profile.write(local_port=port)
    with up("lab") as proc:
        assert f"127.0.0.1:{port}" in proc.wait_up()
        assert proc.finish()[0] == 0


def test_up_reports_a_reconnect_and_keeps_the_port(lab_profile: LabProfile, make_sshd: Any) -> None:
    bastion: Sshd = make_sshd()
    assert bastion.key_path is not None
    lab_profile.known_hosts.write_text(bastion.host_key_line() + "\n")
    shutil.copy(bastion.key_path, lab_profile.identity_file)
    lab_profile.write(bastion=bastion.destination)
    port = closed_port()
    with up("lab", "--port", str(port)) as proc:
        proc.wait_up()
        bastion.kill_sessions()
        time.sleep(0.5)
        assert query(port, lab_profile.postgres, PTS) == 4
        code, _out, err = proc.finish()
    assert code == 0
    assert "reconnecting" in err
    assert "Reconnected." in err


# ----------------------------------------------------------------------------- host keys


def test_changed_host_key_is_refused_with_both_fingerprints(
    lab_profile: LabProfile, tmp_path: Path
) -> None:
    _imposter, imposter_pub = make_key(tmp_path, "ed25519", name="old_host_key")
    sshd = lab_profile.sshd
    lab_profile.known_hosts.write_text(
        f"{sshd.known_hosts_name()} {' '.join(imposter_pub.split()[:2])}\n"
    )
    port = closed_port()
    result, elapsed = run("up", "lab", "--port", str(port))
    assert result.returncode != 0
    line = errline(result.stderr)
    assert "host key" in line
    assert fingerprint(imposter_pub) in line  # what known_hosts expects
    assert sshd.host_key_fingerprint() in line  # what the server presented
    assert f"{lab_profile.known_hosts} line 1" in line
    assert "ssh-keygen" in line
    assert elapsed < FAST
    assert result.stdout == ""  # no address, no psql line
    assert listening_addresses(port) == set()
    no_traceback(result.stderr)


def test_unknown_host_without_a_terminal_is_refused_with_the_way_out(
    lab_profile: LabProfile,
) -> None:
    lab_profile.known_hosts.write_text("")
    result, _ = run("up", "lab", "--port", str(closed_port()))
    assert result.returncode != 0
    line = errline(result.stderr)
    assert "not known" in line
    assert lab_profile.sshd.host_key_fingerprint() in line
    assert "--accept-new-host-key" in line
    assert "ssh-keyscan" in line
    assert lab_profile.known_hosts.read_text() == ""


def test_accept_new_host_key_connects_and_records_it(lab_profile: LabProfile) -> None:
    lab_profile.known_hosts.unlink()
    with up("lab", "--port", "0", "--accept-new-host-key") as proc:
        stdout = proc.wait_up()
        match = re.search(r"127\.0\.0\.1:(\d+)", stdout)
        assert match
        assert query(int(match.group(1)), lab_profile.postgres, PTS) == 4
        assert proc.finish()[0] == 0
    found = subprocess.run(
        [
            "ssh-keygen",
            "-F",
            lab_profile.sshd.known_hosts_name(),
            "-f",
            str(lab_profile.known_hosts),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found
    assert lab_profile.sshd.host_public_key().split()[1] in found.stdout


def test_host_key_prompt_on_a_terminal(lab_profile: LabProfile, pty_run: Any) -> None:
    lab_profile.known_hosts.write_text("")
    term = pty_run("up", "lab", "--port", "0")
    term.expect(r"continue connecting \(yes/no")
    assert f"ED25519 key fingerprint is {lab_profile.sshd.host_key_fingerprint()}" in term.output
    assert "as OpenSSH prints it" in term.output
    term.send("yes\r")
    term.expect(r"is up")
    term.send("\x03")  # Ctrl-C from the terminal
    assert term.wait() == 0
    assert "Closed the tunnel" in term.output
    assert lab_profile.sshd.host_public_key().split()[1] in lab_profile.known_hosts.read_text()


def test_host_key_prompt_answered_no_records_nothing(lab_profile: LabProfile, pty_run: Any) -> None:
    lab_profile.known_hosts.write_text("")
    term = pty_run("up", "lab", "--port", "0")
    term.expect(r"continue connecting")
    term.send("no\r")
    assert term.wait() != 0
    assert "not accepted" in term.output
    assert lab_profile.known_hosts.read_text() == ""


# ----------------------------------------------------------------------------- keys


def test_world_readable_key_is_refused_with_the_chmod_fix(lab_profile: LabProfile) -> None:
    lab_profile.identity_file.chmod(0o644)
    result, elapsed = run("up", "lab")
    assert result.returncode != 0
    line = errline(result.stderr)
    assert f"chmod 600 {lab_profile.identity_file}" in line
    assert "readable by others" in line
    assert elapsed < FAST


def _passphrase_profile(lab_profile: LabProfile, tmp_path: Path) -> None:
    key, public = make_key(tmp_path, "ed25519", passphrase="correct horse", name="locked")
    lab_profile.sshd.authorize(public)
    target = lab_profile.identity_file.with_name("id_locked")
    shutil.copy(key, target)
    target.chmod(0o600)
    lab_profile.write(identity_file=target)


def test_passphrase_key_prompts_hidden_on_a_terminal(
    lab_profile: LabProfile, tmp_path: Path, pty_run: Any
) -> None:
    _passphrase_profile(lab_profile, tmp_path)
    term = pty_run("up", "lab", "--port", "0")
    term.expect(r"Enter passphrase for key '.*id_locked'")
    term.send("correct horse\r")
    term.expect(r"is up")
    assert "correct horse" not in term.output  # not echoed
    term.send("\x03")
    assert term.wait() == 0


def test_passphrase_key_without_a_terminal_names_ssh_add(
    lab_profile: LabProfile, tmp_path: Path
) -> None:
    _passphrase_profile(lab_profile, tmp_path)
    result, _ = run("up", "lab")
    assert result.returncode != 0
    line = errline(result.stderr)
    assert "passphrase-protected and there is no terminal to ask" in line
    assert "ssh-add" in line


# ----------------------------------------------------------------------------- failures


EXIT = {"busy port": 5, "unknown name": 3, "refused": 3, "wrong key": 4, "endpoint unreachable": 6}


@pytest.mark.parametrize(
    "case", ["busy port", "unknown name", "refused", "wrong key", "endpoint unreachable"]
)
def test_each_failure_has_its_own_message_within_15_s(
    case: str, lab_profile: LabProfile, tmp_path: Path
) -> None:
    holder = socket.socket()
    try:
        args = ["up", "lab"]
        expect: list[str]
        if case == "busy port":
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            args += ["--port", str(port)]
            expect = [f"local port {port} is already in use by pid {os.getpid()}"]
        elif case == "unknown name":
            lab_profile.write(bastion="ec2-user@bastion.tunnelman-test.invalid")
            expect = ["bastion name bastion.tunnelman-test.invalid does not resolve"]
        elif case == "refused":
            port = closed_port()
            lab_profile.write(bastion=f"ec2-user@127.0.0.1:{port}")
            expect = [f"bastion 127.0.0.1:{port} refused the connection"]
        elif case == "wrong key":
            stranger, _ = make_key(tmp_path, "ed25519", name="stranger")
            lab_profile.write(identity_file=stranger)
            expect = [f"refused key {stranger}", "authentication failed"]
        else:
            port = closed_port()
            lab_profile.write(endpoint=f"127.0.0.1:{port}")
            expect = [f"cannot reach the database endpoint 127.0.0.1:{port}"]
        result, elapsed = run(*args)
    finally:
        holder.close()
    assert result.returncode == EXIT[case]
    line = errline(result.stderr)
    for text in expect:
        assert text in line
    assert elapsed < FAST
    assert result.stdout == ""
    no_traceback(result.stderr)


def test_forwarding_refused_by_the_bastion(lab_profile: LabProfile, make_sshd: Any) -> None:
    bastion: Sshd = make_sshd(allow_tcp_forwarding=False)
    assert bastion.key_path is not None
    lab_profile.known_hosts.write_text(bastion.host_key_line() + "\n")
    shutil.copy(bastion.key_path, lab_profile.identity_file)
    lab_profile.write(bastion=bastion.destination)
    result, elapsed = run("up", "lab")
    assert result.returncode == 6  # forwarding refused
    line = errline(result.stderr)
    assert "refuses to forward" in line
    assert "administratively prohibited" in line
    assert elapsed < FAST


def test_unknown_profile(lab_profile: LabProfile) -> None:
    result, _ = run("up", "lba")
    assert result.returncode != 0
    assert "no profile named 'lba'" in errline(result.stderr)
    assert "did you mean 'lab'" in result.stderr


# ----------------------------------------------------------------------------- flags


@pytest.mark.usefixtures("run_cli")  # through `run`: a cli test
def test_help_lists_the_flags() -> None:
    result, _ = run("up", "--help")
    assert result.returncode == 0
    for flag in ("--port", "--accept-new-host-key", "--detach"):
        assert flag in result.stdout
