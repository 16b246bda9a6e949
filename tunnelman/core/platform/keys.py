"""Private-key privacy per OS: whether others can read a key file, and the fix to name.

POSIX: OpenSSH's mode rule (no bit for group or others: `chmod 600`). Windows: `st_mode` is
always 0666 there (0444 read-only) and `chmod` cannot change it, so, as OpenSSH for Windows does,
the file's access list decides: the owner must be the user, SYSTEM or Administrators, and no
"allow" entry may give anyone else access (deny entries take nothing away from a reader, so they
are ignored). The fix is `icacls`.

The Windows check is pure logic over parsed entries (`judge_acl`, unit-tested anywhere) plus a thin
ctypes reader (`read_acl`: GetNamedSecurityInfoW, GetAce, ConvertSidToStringSidW,
LookupAccountSidW). Where the access list cannot be read (no ACLs on that file system, an API
failure), a warning is logged and the key is used: the check is a guard against a mistake, and
the server still decides who gets in.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ADMINISTRATORS",
    "POSIX_MODES",
    "SYSTEM",
    "Ace",
    "Acl",
    "KeyProblem",
    "current_user_sid",
    "describe_protection",
    "icacls_fix",
    "judge_acl",
    "key_problem",
    "read_acl",
]

POSIX_MODES = sys.platform != "win32"
"""Whether st_mode and st_uid say who may read a file (not on Windows: 0666 for every file)."""

SYSTEM = "S-1-5-18"
ADMINISTRATORS = "S-1-5-32-544"
_TRUSTED = frozenset({SYSTEM, ADMINISTRATORS})
# Names for the message when LookupAccountSid is not available (or for tests).
_WELL_KNOWN = {
    "S-1-1-0": "Everyone",
    "S-1-5-11": "Authenticated Users",
    "S-1-5-32-545": "Users",
    "S-1-5-32-546": "Guests",
    "S-1-5-4": "INTERACTIVE",
    "S-1-3-0": "CREATOR OWNER",
    SYSTEM: "SYSTEM",
    ADMINISTRATORS: "Administrators",
}


@dataclass(frozen=True)
class Ace:
    """One access-control entry as read from a DACL."""

    sid: str
    allow: bool  # ACCESS_ALLOWED_ACE_TYPE; False: a deny entry (or a type we do not judge)
    mask: int
    inherit_only: bool = False  # applies to children only, not to this file
    name: str | None = None  # DOMAIN\account, when it could be looked up

    def label(self) -> str:
        return self.name or _WELL_KNOWN.get(self.sid, self.sid)


@dataclass(frozen=True)
class Acl:
    """A file's owner and DACL. `aces` None: a NULL DACL (everyone has full access)."""

    owner: str
    aces: tuple[Ace, ...] | None
    owner_name: str | None = None


@dataclass(frozen=True)
class KeyProblem:
    """Why a key is refused, and what to run."""

    message: str
    hint: str


def icacls_fix(path: Path | str) -> str:
    return f'run `icacls "{path}" /inheritance:r /grant:r "%USERNAME%:R"`'


def judge_acl(acl: Acl, user_sid: str | None) -> str | None:
    """What is wrong with this ACL for a private key (None: nothing), as OpenSSH for Windows judges.

    The owner must be `user_sid`, SYSTEM or Administrators. Allow entries for those (and for the
    owner) are fine; any other allow entry granting something makes the key readable by others.
    """
    mine = {s for s in (user_sid, acl.owner) if s} | _TRUSTED
    if user_sid and acl.owner not in _TRUSTED and acl.owner != user_sid:
        owner = acl.owner_name or _WELL_KNOWN.get(acl.owner, acl.owner)
        return f"is owned by {owner}, not by you"
    if acl.aces is None:
        return "has no access list at all (everyone may read it)"
    others: list[str] = []
    for ace in acl.aces:
        if not ace.allow or ace.inherit_only or ace.mask == 0 or ace.sid in mine:
            continue
        if ace.label() not in others:
            others.append(ace.label())
    if others:
        return "can be read by " + ", ".join(others)
    return None


def key_problem(path: Path, st: os.stat_result) -> KeyProblem | None:
    """Why the private key at `path` (a regular file, stat `st`) must be refused; None: it is fine."""
    if sys.platform == "win32":
        try:
            acl, user = read_acl(str(path)), current_user_sid()
        except OSError as exc:
            # logging (with its handlers) is not imported on the way to the agent: only here.
            from tunnelman.core.logs import get_logger

            get_logger("platform").warning(
                "cannot read the access list of %s (%s): using the key without that check",
                path,
                exc,
            )
            return None
        problem = judge_acl(acl, user)
        if problem is None:
            return None
        return KeyProblem(
            f"private key {path} {problem}; ssh refuses such keys and so does tunnelman",
            hint=icacls_fix(path),
        )
    else:  # noqa: RET505  (mypy narrows each platform branch)
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            return KeyProblem(
                f"private key {path} is readable by others (mode {mode:04o}); "
                "ssh refuses such keys and so does tunnelman",
                hint=f"run `chmod 600 {path}`",
            )
        return None


def describe_protection(path: Path) -> str:
    """How the key file is protected, for `tunnelman check` ("mode 0600", "owner only")."""
    if sys.platform == "win32":
        try:
            acl, user = read_acl(str(path)), current_user_sid()
        except OSError:
            return "access list unreadable"
        problem = judge_acl(acl, user)
        return "access: owner, SYSTEM, Administrators only" if problem is None else problem
    else:  # noqa: RET505  (mypy narrows each platform branch)
        return f"mode {path.stat().st_mode & 0o777:04o}"


# ----------------------------------------------------------------------------- Win32 reader

if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    _SE_FILE_OBJECT = 1
    _OWNER_SECURITY_INFORMATION = 0x1
    _DACL_SECURITY_INFORMATION = 0x4
    _ACCESS_ALLOWED_ACE_TYPE = 0
    _INHERIT_ONLY_ACE = 0x08
    _TOKEN_QUERY = 0x0008
    _TOKEN_USER = 1

    class _ACL(ctypes.Structure):
        _fields_ = [
            ("AclRevision", wintypes.BYTE),
            ("Sbz1", wintypes.BYTE),
            ("AclSize", wintypes.WORD),
            ("AceCount", wintypes.WORD),
            ("Sbz2", wintypes.WORD),
        ]

    class _ACE_HEADER(ctypes.Structure):
        _fields_ = [
            ("AceType", wintypes.BYTE),
            ("AceFlags", wintypes.BYTE),
            ("AceSize", wintypes.WORD),
        ]

    class _ALLOWED_ACE(ctypes.Structure):  # ACCESS_ALLOWED_ACE and ACCESS_DENIED_ACE alike
        _fields_ = [("Header", _ACE_HEADER), ("Mask", wintypes.DWORD), ("SidStart", wintypes.DWORD)]

    def _api() -> tuple[ctypes.WinDLL, ctypes.WinDLL]:
        advapi32 = ctypes.WinDLL("advapi32", use_last_error=True)
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        advapi32.GetNamedSecurityInfoW.restype = wintypes.DWORD
        advapi32.GetNamedSecurityInfoW.argtypes = [
            wintypes.LPCWSTR,
            ctypes.c_int,
            wintypes.DWORD,
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
            ctypes.POINTER(ctypes.c_void_p),
        ]
        advapi32.GetAce.restype = wintypes.BOOL
        advapi32.GetAce.argtypes = [
            ctypes.c_void_p,
            wintypes.DWORD,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        advapi32.ConvertSidToStringSidW.restype = wintypes.BOOL
        advapi32.ConvertSidToStringSidW.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(wintypes.LPWSTR),
        ]
        advapi32.LookupAccountSidW.restype = wintypes.BOOL
        advapi32.LookupAccountSidW.argtypes = [
            wintypes.LPCWSTR,
            ctypes.c_void_p,
            wintypes.LPWSTR,
            ctypes.POINTER(wintypes.DWORD),
            wintypes.LPWSTR,
            ctypes.POINTER(wintypes.DWORD),
            ctypes.POINTER(ctypes.c_int),
        ]
        advapi32.OpenProcessToken.restype = wintypes.BOOL
        advapi32.OpenProcessToken.argtypes = [
            wintypes.HANDLE,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.HANDLE),
        ]
        advapi32.GetTokenInformation.restype = wintypes.BOOL
        advapi32.GetTokenInformation.argtypes = [
            wintypes.HANDLE,
            ctypes.c_int,
            ctypes.c_void_p,
            wintypes.DWORD,
            ctypes.POINTER(wintypes.DWORD),
        ]
        kernel32.LocalFree.restype = ctypes.c_void_p
        kernel32.LocalFree.argtypes = [ctypes.c_void_p]
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
        return advapi32, kernel32

    def _sid_string(advapi32: ctypes.WinDLL, kernel32: ctypes.WinDLL, sid: int) -> str:
        text = wintypes.LPWSTR()
        if not advapi32.ConvertSidToStringSidW(sid, ctypes.byref(text)):
            raise ctypes.WinError(ctypes.get_last_error())
        try:
            return str(text.value)
        finally:
            kernel32.LocalFree(ctypes.cast(text, ctypes.c_void_p))

    def _account(advapi32: ctypes.WinDLL, sid: int) -> str | None:
        name = ctypes.create_unicode_buffer(256)
        domain = ctypes.create_unicode_buffer(256)
        n, d, use = wintypes.DWORD(256), wintypes.DWORD(256), ctypes.c_int()
        if not advapi32.LookupAccountSidW(None, sid, name, n, domain, d, ctypes.byref(use)):
            return None
        return f"{domain.value}\\{name.value}" if domain.value else name.value

    def read_acl(path: str) -> Acl:
        """The owner and DACL of `path`; OSError when they cannot be read."""
        advapi32, kernel32 = _api()
        owner, dacl, sd = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        code = advapi32.GetNamedSecurityInfoW(
            path,
            _SE_FILE_OBJECT,
            _OWNER_SECURITY_INFORMATION | _DACL_SECURITY_INFORMATION,
            ctypes.byref(owner),
            None,
            ctypes.byref(dacl),
            None,
            ctypes.byref(sd),
        )
        if code != 0:
            raise ctypes.WinError(code)
        try:
            if not owner.value:
                raise OSError("the file has no owner")
            owner_sid = _sid_string(advapi32, kernel32, owner.value)
            if not dacl.value:
                return Acl(owner_sid, None, _account(advapi32, owner.value))
            header = _ACL.from_address(dacl.value)
            aces: list[Ace] = []
            for index in range(header.AceCount):
                ptr = ctypes.c_void_p()
                if not advapi32.GetAce(dacl.value, index, ctypes.byref(ptr)) or not ptr.value:
                    raise ctypes.WinError(ctypes.get_last_error())
                ace = _ALLOWED_ACE.from_address(ptr.value)
                sid_ptr = ptr.value + _ALLOWED_ACE.SidStart.offset
                allow = ace.Header.AceType == _ACCESS_ALLOWED_ACE_TYPE
                if not allow and ace.Header.AceType != 1:  # neither allowed nor denied: skip
                    continue
                aces.append(
                    Ace(
                        sid=_sid_string(advapi32, kernel32, sid_ptr),
                        allow=allow,
                        mask=int(ace.Mask),
                        inherit_only=bool(ace.Header.AceFlags & _INHERIT_ONLY_ACE),
                        name=_account(advapi32, sid_ptr),
                    )
                )
            return Acl(owner_sid, tuple(aces), _account(advapi32, owner.value))
        finally:
            kernel32.LocalFree(sd)

    def current_user_sid() -> str | None:
        """The SID of the user this process runs as (None: cannot tell)."""
        advapi32, kernel32 = _api()
        token = wintypes.HANDLE()
        if not advapi32.OpenProcessToken(
            kernel32.GetCurrentProcess(), _TOKEN_QUERY, ctypes.byref(token)
        ):
            return None
        try:
            size = wintypes.DWORD()
            advapi32.GetTokenInformation(token, _TOKEN_USER, None, 0, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            if not advapi32.GetTokenInformation(token, _TOKEN_USER, buf, size, ctypes.byref(size)):
                return None
            sid = ctypes.c_void_p.from_buffer(buf).value  # TOKEN_USER.User.Sid comes first
            return _sid_string(advapi32, kernel32, sid) if sid else None
        finally:
            kernel32.CloseHandle(token)

else:

    def read_acl(path: str) -> Acl:
        """Windows only: POSIX files have modes, not access lists."""
        raise OSError(f"{path}: access lists are read on Windows only")

    def current_user_sid() -> str | None:
        return None
