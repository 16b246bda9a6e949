"""known_hosts: OpenSSH's file format, fingerprints, and the unknown / changed / revoked policy.

Keys are made by the real ssh-keygen, and every file we write is read back by the real
`ssh-keygen -F`, so "as OpenSSH does" is checked against OpenSSH itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from tests.lab.keys import make_key
from tunnelman.core.errors import HostKeyError
from tunnelman.core.ssh.known_hosts import (
    HostKeyChanged,
    HostKeyInfo,
    HostKeyPolicy,
    HostKeyTypeMismatch,
    HostKeyUnknown,
    add,
    entries_for,
    fingerprint,
    host_matches,
    host_pattern,
    known_key_types,
    read_entries,
    verify,
)

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen")


def public_key(line: str) -> paramiko.PKey:
    key_type, b64 = line.split()[:2]
    return paramiko.PKey.from_type_string(key_type, base64.b64decode(b64))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("hostkeys")
    return {
        "ed25519": make_key(d, "ed25519", name="a")[1],
        "ed25519_b": make_key(d, "ed25519", name="b")[1],
        "ecdsa": make_key(d, "ecdsa", name="c")[1],
        "rsa": make_key(d, "rsa", name="d")[1],
    }


def key_line(name: str, line: str) -> str:
    return f"{name} {' '.join(line.split()[:2])}\n"


def hashed(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def keygen_fingerprint(line: str, tmp_path: Path) -> str:
    pub = tmp_path / "k.pub"
    pub.write_text(line + "\n")
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[1]


# ----------------------------------------------------------------------------- fingerprints


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_is_exactly_what_ssh_keygen_prints(
    kind: str, keys: dict[str, str], tmp_path: Path
) -> None:
    expected = keygen_fingerprint(keys[kind], tmp_path)
    assert fingerprint(public_key(keys[kind])) == expected
    assert expected.startswith("SHA256:")
    assert not expected.endswith("=")


def test_host_pattern_uses_brackets_only_off_port_22() -> None:
    assert host_pattern("Bastion.Example.com", 22) == "bastion.example.com"
    assert host_pattern("10.0.0.5", 2222) == "[10.0.0.5]:2222"


# ----------------------------------------------------------------------------- matching


def test_plain_patterns_wildcards_and_negation() -> None:
    assert host_matches("bastion.example.com", "bastion.example.com")
    assert host_matches("other,BASTION.example.com", "bastion.example.com")
    assert host_matches("*.example.com", "bastion.example.com")
    assert host_matches("bastion.example.co?", "bastion.example.com")
    assert not host_matches("*.example.com,!bastion.example.com", "bastion.example.com")
    assert not host_matches("example.com", "bastion.example.com")
    # brackets are literal, not a character class
    assert host_matches("[10.0.0.5]:2222", "[10.0.0.5]:2222")
    assert not host_matches("[10.0.0.5]:2222", "10.0.0.5")
    assert not host_matches("10.0.0.5", "[10.0.0.5]:2222")


def test_hashed_entries_match_only_their_host() -> None:
    field = hashed("[127.0.0.1]:2222")
    assert host_matches(field, "[127.0.0.1]:2222")
    assert not host_matches(field, "127.0.0.1")
    assert not host_matches(field, "[127.0.0.1]:2223")


def test_read_entries_skips_comments_junk_and_keeps_line_numbers(
    keys: dict[str, str], tmp_path: Path
) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(
        "# comment\n\n"
        "garbage line\n"
        "host ssh-ed25519 not-base64!!\n"
        + key_line("bastion", keys["ed25519"])
        + "@cert-authority *.example.com "
        + " ".join(keys["rsa"].split()[:2])
        + "\n"
    )
    entries = read_entries(kh)
    assert [(e.line, e.marker, e.key_type) for e in entries] == [
        (5, None, "ssh-ed25519"),
        (6, "@cert-authority", "ssh-rsa"),
    ]
    assert read_entries(tmp_path / "missing") == []


def test_known_key_types_ignore_markers(keys: dict[str, str], tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(
        key_line("[h]:2222", keys["rsa"])
        + "@cert-authority [h]:2222 "
        + " ".join(keys["ecdsa"].split()[:2])
        + "\n"
        + key_line(hashed("[h]:2222"), keys["ed25519"])
    )
    assert known_key_types(kh, "h", 2222) == ["ssh-rsa", "ssh-ed25519"]
    assert len(entries_for(kh, "h", 2222)) == 3


# ----------------------------------------------------------------------------- verify


def test_known_key_passes_plain_and_hashed(keys: dict[str, str], tmp_path: Path) -> None:
    key = public_key(keys["ed25519"])
    for name in ("[127.0.0.1]:2222", hashed("[127.0.0.1]:2222")):
        kh = tmp_path / "known_hosts"
        kh.write_text(key_line(name, keys["ed25519"]))
        info = verify("127.0.0.1", 2222, key, kh, HostKeyPolicy())
        assert info == HostKeyInfo("127.0.0.1", 2222, "ssh-ed25519", fingerprint(key))


def test_port_22_entries_do_not_use_brackets(keys: dict[str, str], tmp_path: Path) -> None:
    key = public_key(keys["ed25519"])
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line("bastion.example.com", keys["ed25519"]))
    verify("bastion.example.com", 22, key, kh, HostKeyPolicy())
    with pytest.raises(HostKeyUnknown):
        verify("bastion.example.com", 2222, key, kh, HostKeyPolicy())


def test_unknown_key_without_anyone_to_ask_is_refused_with_the_way_out(
    keys: dict[str, str], tmp_path: Path
) -> None:
    key = public_key(keys["ed25519"])
    kh = tmp_path / "known_hosts"
    with pytest.raises(HostKeyUnknown) as caught:
        verify("127.0.0.1", 2222, key, kh, HostKeyPolicy())
    text = str(caught.value)
    assert "--accept-new-host-key" in text
    assert "ssh-keyscan -p 2222 127.0.0.1" in text
    assert fingerprint(key) in text
    assert caught.value.info.fingerprint == fingerprint(key)
    assert caught.value.known_hosts == kh
    assert not kh.exists()  # nothing recorded


def test_accept_new_records_a_line_openssh_finds(keys: dict[str, str], tmp_path: Path) -> None:
    key = public_key(keys["ed25519"])
    kh = tmp_path / "newdir" / "sub" / "known_hosts"
    verify("127.0.0.1", 2222, key, kh, HostKeyPolicy(accept_new=True))
    assert stat.S_IMODE(kh.stat().st_mode) == 0o600
    assert stat.S_IMODE(kh.parent.stat().st_mode) == 0o700
    found = subprocess.run(
        ["ssh-keygen", "-F", "[127.0.0.1]:2222", "-f", str(kh)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode == 0, found.stderr
    assert keys["ed25519"].split()[1] in found.stdout
    # now known: no second line
    verify("127.0.0.1", 2222, key, kh, HostKeyPolicy(accept_new=True))
    assert len(kh.read_text().splitlines()) == 1


def test_append_keeps_existing_lines_and_adds_a_missing_newline(
    keys: dict[str, str], tmp_path: Path
) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line("other", keys["rsa"]).rstrip("\n"))  # no final newline
    add(kh, "bastion", 22, public_key(keys["ed25519"]))
    lines = kh.read_text().splitlines()
    assert lines[0].startswith("other ssh-rsa ")
    assert lines[1].startswith("bastion ssh-ed25519 ")


def test_ask_callback_decides(keys: dict[str, str], tmp_path: Path) -> None:
    key = public_key(keys["ed25519"])
    kh = tmp_path / "known_hosts"
    seen: list[HostKeyInfo] = []

    def no(info: HostKeyInfo) -> bool:
        seen.append(info)
        return False

    with pytest.raises(HostKeyUnknown, match="not accepted"):
        verify("h", 2222, key, kh, HostKeyPolicy(ask=no))
    assert not kh.exists()
    assert seen[0].fingerprint == fingerprint(key)
    assert seen[0].display_type == "ED25519"
    # ask wins over accept_new: the person decides
    with pytest.raises(HostKeyUnknown):
        verify("h", 2222, key, kh, HostKeyPolicy(accept_new=True, ask=no))
    verify("h", 2222, key, kh, HostKeyPolicy(ask=lambda info: True))
    assert "[h]:2222 ssh-ed25519" in kh.read_text()


def test_changed_key_shows_both_fingerprints_file_line_and_fix(
    keys: dict[str, str], tmp_path: Path
) -> None:
    old, new = keys["ed25519"], keys["ed25519_b"]
    kh = tmp_path / "known_hosts"
    kh.write_text("# header\n" + key_line("[127.0.0.1]:2222", old))
    with pytest.raises(HostKeyChanged) as caught:
        verify("127.0.0.1", 2222, public_key(new), kh, HostKeyPolicy(accept_new=True))
    exc = caught.value
    text = str(exc)
    assert "host key" in text
    assert fingerprint(public_key(old)) in text
    assert fingerprint(public_key(new)) in text
    assert f"{kh} line 2" in text
    assert f"ssh-keygen -f {kh} -R '[127.0.0.1]:2222'" in text
    assert (exc.expected, exc.line, exc.known_hosts) == (fingerprint(public_key(old)), 2, kh)
    assert len(kh.read_text().splitlines()) == 2  # accept_new never overwrites


@pytest.mark.parametrize(
    "policy",
    [HostKeyPolicy(), HostKeyPolicy(accept_new=True), "ask"],
    ids=["no-terminal", "accept-new", "ask"],
)
def test_other_key_type_known_is_refused_not_a_new_host(
    keys: dict[str, str], tmp_path: Path, policy: HostKeyPolicy | str
) -> None:
    """A key of another type for a known host is refused whatever the policy (OpenSSH's rule):
    otherwise a man in the middle offering RSA defeats a pinned ED25519 key."""
    asked: list[HostKeyInfo] = []
    if policy == "ask":

        def ask(info: HostKeyInfo) -> bool:
            asked.append(info)
            return True

        policy = HostKeyPolicy(ask=ask)
    assert isinstance(policy, HostKeyPolicy)
    kh = tmp_path / "known_hosts"
    kh.write_text("# pinned\n" + key_line("[h]:2222", keys["ed25519"]))
    before = kh.read_bytes()
    with pytest.raises(HostKeyTypeMismatch) as caught:
        verify("h", 2222, public_key(keys["rsa"]), kh, policy)
    exc = caught.value
    assert isinstance(exc, HostKeyChanged)  # refused, never the "unknown host" question
    text = str(exc)
    assert f"ED25519 {fingerprint(public_key(keys['ed25519']))} ({kh} line 2)" in text
    assert f"RSA host key ({fingerprint(public_key(keys['rsa']))})" in text
    assert f"ssh-keygen -f {kh} -R '[h]:2222'" in text
    assert "HostKeyAlgorithms" in text
    assert [(k.key_type, k.line) for k in exc.known] == [("ssh-ed25519", 2)]
    assert asked == []
    assert kh.read_bytes() == before


def test_plain_host_entry_is_for_port_22_only(keys: dict[str, str], tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(key_line("h", keys["ed25519"]) + key_line("[g]:2222", keys["ed25519"]))
    key = public_key(keys["ed25519"])
    assert verify("h", 22, key, kh, HostKeyPolicy()).target == "h"
    assert verify("g", 2222, key, kh, HostKeyPolicy()).target == "[g]:2222"
    for host, port in (("h", 2222), ("g", 22), ("g", 2223)):
        with pytest.raises(HostKeyUnknown):
            verify(host, port, key, kh, HostKeyPolicy())
    assert [e.line for e in entries_for(kh, "h", 22)] == [1]
    assert entries_for(kh, "h", 2222) == []


def test_revoked_key_is_refused_even_with_accept_new(keys: dict[str, str], tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("@revoked * " + " ".join(keys["ed25519"].split()[:2]) + "\n")
    with pytest.raises(HostKeyError, match="@revoked"):
        verify("h", 2222, public_key(keys["ed25519"]), kh, HostKeyPolicy(accept_new=True))


def test_cert_authority_lines_do_not_count_as_known(keys: dict[str, str], tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("@cert-authority * " + " ".join(keys["ed25519"].split()[:2]) + "\n")
    with pytest.raises(HostKeyUnknown):
        verify("h", 2222, public_key(keys["ed25519"]), kh, HostKeyPolicy())


def test_pinned_key_must_match_on_reconnect(keys: dict[str, str], tmp_path: Path) -> None:
    first, other = public_key(keys["ed25519"]), public_key(keys["ed25519_b"])
    kh = tmp_path / "known_hosts"  # empty: the first key was accepted but not saved
    pin = first.asbytes()
    assert verify("h", 2222, first, kh, HostKeyPolicy(), pinned=pin).fingerprint
    with pytest.raises(HostKeyChanged) as caught:
        verify("h", 2222, other, kh, HostKeyPolicy(accept_new=True), pinned=pin)
    assert caught.value.expected == fingerprint(first)


def test_unreadable_known_hosts_is_a_clear_error(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.mkdir()
    with pytest.raises(HostKeyError, match="is a directory"):
        read_entries(kh)


def test_a_type_mismatch_keeps_its_class_and_keys_across_the_agent(
    keys: dict[str, str], tmp_path: Path
) -> None:
    """The agent sends errors as JSON: the refusal must arrive as the same refusal (not as an
    "unknown host" the client would offer to accept)."""
    import json

    from tunnelman.agent import protocol

    kh = tmp_path / "known_hosts"
    kh.write_text(key_line("[h]:2222", keys["ed25519"]) + key_line("[h]:2222", keys["ecdsa"]))
    with pytest.raises(HostKeyTypeMismatch) as caught:
        verify("h", 2222, public_key(keys["rsa"]), kh, HostKeyPolicy(accept_new=True))
    wire = json.loads(protocol.encode(protocol.error_to_wire(caught.value)))
    back = protocol.error_from_wire(wire)
    assert type(back) is HostKeyTypeMismatch
    assert str(back) == str(caught.value)
    assert back.known == caught.value.known
    assert [k.display_type for k in back.known] == ["ED25519", "ECDSA"]
    assert back.info == caught.value.info
    wire["known"] = [{"key_type": 1}, "junk"]  # a malformed reply still gives the refusal
    assert type(protocol.error_from_wire(wire)) is HostKeyTypeMismatch
