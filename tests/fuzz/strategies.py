"""Hypothesis strategies for the fuzz tests: profile files (structured and mutated), argv, lines.

Profile documents are built per key from the schema in `tunnelman.core.profiles` (every key of
`SCHEMA`), mixing plausible values with edge values (boundaries, huge numbers, wrong TOML types,
control and bidirectional characters, very long text, `~user` paths), then written as TOML text
by a small serializer here, so that what reaches the loader is exactly the text generated (a
TOML library would normalise or refuse some of it). Raw documents are mutations of real files.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

from hypothesis import strategies as st

from tunnelman.core.profiles import PROFILE_KEYS

__test__ = False

# ----------------------------------------------------------------------------- text

_EDGE_CHARS = (
    "\x00\x01\x07\x08\t\n\r\x1b\x7f\x85\xa0\u00e9\u2028\u2029\u202e\u2066\u200b\ufeff"
    "\ufffe\uffff\U0001f418\u4e2d:;@[]#'\"\\%=&?+ ,/.-_~$`!*"
)

edge_text = st.text(alphabet=st.sampled_from(_EDGE_CHARS), max_size=12)
"""Short strings of the characters that break quoting, escaping and terminals."""

plain_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
"""Any text TOML can carry (no lone surrogates)."""

identifier = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
any_text = st.one_of(
    identifier,
    plain_text,
    edge_text,
    st.tuples(identifier, edge_text, identifier).map("".join),
    st.integers(4000, 5000).map(lambda n: "x" * n),  # around MAX_TEXT
    st.sampled_from(["", " ", "  x  ", "*", "-", "--", "~", "~/", "~nosuchuser/x", "$HOME"]),
)

hosts = st.one_of(
    st.sampled_from(
        [
            "127.0.0.1",
            "localhost",
            "db.cluster-abc.us-east-2.rds.amazonaws.com",
            "::1",
            "[::1]",
            "fe80::1%eth0",
            "a" * 63 + ".example",
            "a" * 64 + ".example",
            "." + "b" * 10,
            "xn--nxasmq6b",
            "bücher.example",
            "a..b",
            "[",
            "]",
            "[::1",
        ]
    ),
    st.lists(identifier, min_size=1, max_size=4).map(".".join),
    any_text,
)
ports_text = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["", "0", "65535", "65536", "²", "٣", "0x16", "99999999999999999999", "+22"]),
)


@st.composite
def host_port(draw: st.DrawFn, *, user: bool) -> str:
    host = draw(hosts)
    if ":" in host and not host.startswith("[") and draw(st.booleans()):
        host = f"[{host}]"
    text = host
    if draw(st.booleans()):
        text += ":" + draw(ports_text)
    if user and draw(st.booleans()):
        text = draw(st.one_of(identifier, any_text)) + "@" + text
    return text


paths = st.one_of(
    st.sampled_from(
        [
            "~/.ssh/id_ed25519",
            "~/.ssh/known_hosts",
            "~",
            "~root/x",
            "~nosuchuser/key",
            "/dev/null",
            "relative/key.pem",
            "C:\\Users\\a\\key.pem",
            "x" * 256,
            "/" + "a/" * 2100,
        ]
    ),
    any_text,
)

ints = st.one_of(
    st.integers(-3, 70000),
    st.sampled_from([0, 1, 3600, 3601, 65535, 65536, 2**31, 2**63 - 1, -(2**63)]),
)

# ----------------------------------------------------------------------------- TOML values


def _datetimes() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.datetimes(),
        st.dates(),
        st.times(),
        st.datetimes(timezones=st.just(datetime.UTC)),
    )


toml_scalar: st.SearchStrategy[Any] = st.one_of(
    any_text,
    ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    _datetimes(),
)
toml_value: st.SearchStrategy[Any] = st.recursive(
    toml_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(identifier, edge_text), inner, max_size=3),
    ),
    max_leaves=6,
)

_CHOICES = {
    "password": ["keyring", "prompt", "none", "iam", "secretsmanager", "Keyring", "", "kerying"],
    "sslmode": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full", "verify"],
    "engine": ["sshtunnel", "openssh", "paramiko", "OpenSSH"],
}


def key_value(key: str) -> st.SearchStrategy[Any]:
    """Values for one profile key: mostly of the right shape, some edge, some of any TOML type."""
    if key in _CHOICES:
        right: st.SearchStrategy[Any] = st.sampled_from(_CHOICES[key])
    elif key == "bastion":
        right = host_port(user=True)
    elif key == "endpoint":
        right = host_port(user=False)
    elif key in ("identity_file", "known_hosts", "sslrootcert"):
        right = paths
    elif key in ("local_port", "connect_timeout", "keepalive"):
        right = ints
    elif key == "instance_connect":
        right = st.booleans()
    elif key == "region":
        right = st.one_of(st.sampled_from(["us-east-2", "eu-west-1", "-bad", "a" * 64]), any_text)
    elif key in ("database", "user", "description"):
        right = st.one_of(any_text, st.sampled_from(["geo", "postgres", "a b", "x'y", 'q"r']))
    else:  # cluster, secret, aws_profile, bastion_instance_id: identifiers
        right = st.one_of(identifier, any_text, st.just("i-0123456789abcdef0"))
    return st.one_of(right, right, right, toml_value)


@st.composite
def profile_table(draw: st.DrawFn, *, sane: bool = False) -> dict[str, Any]:
    """A `[profiles.NAME]` or `[defaults]` table; `sane`: mostly loadable values."""
    keys = draw(st.lists(st.sampled_from(PROFILE_KEYS), unique=True, max_size=len(PROFILE_KEYS)))
    table: dict[str, Any] = {}
    for key in keys:
        table[key] = draw(_sane_value(key) if sane else key_value(key))
    if not sane and draw(st.integers(0, 9)) == 0:
        table[draw(st.one_of(identifier, edge_text))] = draw(toml_scalar)  # unknown key
    return table


def _sane_value(key: str) -> st.SearchStrategy[Any]:
    """A value the loader should accept, so that many profiles reach the renderers."""
    if key in _CHOICES:
        return st.sampled_from(_CHOICES[key][:-2] if key != "engine" else _CHOICES[key][:2])
    if key == "bastion":
        return st.sampled_from(["ec2-user@bastion.example.com", "127.0.0.1:2222", "[::1]:22"])
    if key == "endpoint":
        return st.sampled_from(["db.example.com", "db.example.com:6543", "[::1]:5432", "::1"])
    if key in ("identity_file", "known_hosts", "sslrootcert"):
        return st.sampled_from(["~/.ssh/k", "/tmp/a b/k.pem", "~/x'y\"z", "rel/p%20q"])
    if key == "local_port":
        return st.integers(1, 65535)
    if key in ("connect_timeout", "keepalive"):
        return st.integers(1, 3600)
    if key == "instance_connect":
        return st.just(False)
    if key == "region":
        return st.sampled_from(["us-east-2", "eu-west-1"])
    if key == "description":
        return any_text.filter(lambda t: "\x00" not in t and len(t) <= 4096)
    if key in ("database", "user"):
        return st.one_of(
            identifier,
            st.text(
                alphabet=st.characters(
                    codec="utf-8", exclude_categories=["Cs", "Cc"], exclude_characters="\x00"
                ),
                min_size=1,
                max_size=30,
            ).filter(lambda t: t.strip() != ""),
            st.sampled_from(["a b", "x'y", 'q"r', "a\\b", "u:v", "p%q", "a&b=c", "d?e#f", "/x/"]),
        )
    return identifier


profile_names = st.one_of(
    identifier,
    st.sampled_from(["prod", "a", "x" * 63, "x" * 64, "-x", "a b", "é", "a\nb", ""]),
    edge_text,
)


@st.composite
def profile_document(draw: st.DrawFn) -> dict[str, Any]:
    """A whole parsed-TOML-shaped document: [defaults], [profiles.*], sometimes odd tops."""
    sane = draw(st.booleans())
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["defaults"] = draw(profile_table(sane=sane))
    names = draw(
        st.lists(identifier if sane else profile_names, unique=True, min_size=0, max_size=4)
    )
    doc["profiles"] = {name: draw(profile_table(sane=sane)) for name in names}
    odd = draw(st.integers(0, 19))
    if odd == 0:
        doc["profiles"] = draw(toml_scalar)
    elif odd == 1:
        doc["defaults"] = draw(toml_scalar)
    elif odd == 2:
        doc[draw(st.one_of(identifier, edge_text))] = draw(toml_value)
    elif odd == 3 and doc["profiles"]:
        first = next(iter(doc["profiles"]))
        doc["profiles"][first] = draw(toml_scalar)
    return doc


# ----------------------------------------------------------------------------- TOML text


def _toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return (
        key
        if key and all(c.isascii() and (c.isalnum() or c in "-_") for c in key)
        else (_toml_str(key))
    )


def toml_value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {toml_value_text(v)}" for k, v in value.items())
        return "{" + inner + "}"
    raise TypeError(type(value).__name__)


def document_text(doc: dict[str, Any]) -> str:
    """The TOML text of a document from `profile_document` (tables as `[...]` headers)."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in doc.items():
        if key == "profiles" and isinstance(value, dict):
            for name, table in value.items():
                header = f"profiles.{_toml_key(name)}"
                if isinstance(table, dict):
                    tables.append((header, table))
                else:
                    lines.insert(
                        0,
                        f"{_toml_key('profiles')} = {{ {_toml_key(name)} = "
                        f"{toml_value_text(table)} }}",
                    )
            continue
        if isinstance(value, dict):
            tables.append((_toml_key(key), value))
        else:
            lines.append(f"{_toml_key(key)} = {toml_value_text(value)}")
    for header, table in tables:
        lines.append(f"\n[{header}]")
        lines.extend(f"{_toml_key(k)} = {toml_value_text(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- raw mutations

_TOKENS = [
    b"[",
    b"]",
    b"[[",
    b"]]",
    b"=",
    b'"',
    b"'''",
    b'"""',
    b"\\u",
    b"\\U0010FFFF",
    b"\\uD800",
    b"\n[profiles.x]\n",
    b"\n[defaults]\n",
    b"\n[profiles]\n",
    b"\n[[profiles.y]]\n",
    b"local_port = 99999999999999999999999\n",
    b"keepalive = " + b"9" * 5000 + b"\n",
    b"x = " + b"[" * 2000,
    b"x = " + b"{a=" * 500,
    b"1e999",
    b"nan",
    b"1979-05-27T07:32:00Z",
    b"\x00",
    b"\xff\xfe",
    b"\xc3",
    b"\r",
    b"\r\n",
    b"\t",
    b"#",
    b"\xef\xbb\xbf",
    b'description = "\xe2\x80\xae"\n',
    b'bastion = "u@[::1]:22"\n',
    b'identity_file = "~nosuchuser/k"\n',
]


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file (the example, a generated document) with a few byte-level mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 6))
        at = draw(st.integers(0, len(data)))
        if op == 0:
            data[at:at] = draw(st.sampled_from(_TOKENS))
        elif op == 1:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            end = draw(st.integers(at, min(len(data), at + 40)))
            del data[at:end]
        elif op == 3 and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == 4:
            del data[at:]  # truncated (a half-written file)
        elif op == 5:
            end = draw(st.integers(at, min(len(data), at + 80)))
            data[at:at] = data[at:end]  # a duplicated run (a duplicate key or table)
        else:
            data[at:at] = draw(plain_text).encode("utf-8")
    return bytes(data)


# ----------------------------------------------------------------------------- agent lines

json_scalar: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    any_text,
)
json_value: st.SearchStrategy[Any] = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(any_text, inner, max_size=3)
    ),
    max_leaves=8,
)
