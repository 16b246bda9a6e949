"""Child processes per OS: detaching, dying with tunnelman, no console window, finding ssh.

- The agent starts detached: its own session on POSIX; on Windows DETACHED_PROCESS (no console,
  so closing the terminal or a Ctrl-C there cannot reach it), its own process group, no window.
- The OpenSSH engine's ssh must end when tunnelman ends, even when tunnelman is killed. POSIX: a
  small `sh` watchdog reads a pipe from us and ends ssh when it closes, and the child runs in its
  own session (killpg as the last resort). Windows has neither `sh` nor killpg: ssh.exe runs
  directly, in a Job object with JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE whose only handle this process
  holds (the system closes it when we exit, however we exit, and kills the job's processes), with
  CREATE_NO_WINDOW (no console window pops up, and our console's Ctrl-C does not reach it).
- Windows ships the OpenSSH client in %SystemRoot%\\System32\\OpenSSH, which is not always on PATH.
- Advisory file locks (one agent per user): `flock` on POSIX (released by the kernel when the
  holder dies, `kill -9` included), `msvcrt.locking` on Windows (released when the process ends).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CREATE_NEW_PROCESS_GROUP",
    "CREATE_NO_WINDOW",
    "DETACHED_PROCESS",
    "JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE",
    "PIPE_WATCHDOG",
    "ChildPlan",
    "adopt_child",
    "detached_kwargs",
    "kill_hard",
    "ssh_child_plan",
    "ssh_search_path",
    "try_lock",
    "unlock",
]

# winbase.h values, spelled out so the plans can be built (and tested) on any OS.
DETACHED_PROCESS = 0x00000008
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x00002000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9


def detached_kwargs(platform: str = sys.platform) -> dict[str, Any]:
    """Popen keywords for a background process that outlives the terminal (the agent)."""
    if platform == "win32":
        return {"creationflags": DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW}
    return {"start_new_session": True}  # no controlling terminal: closing it is harmless


@dataclass(frozen=True)
class ChildPlan:
    """How the OpenSSH engine starts ssh on this OS."""

    watchdog: bool  # run under the `sh` pipe watchdog (POSIX)
    job: bool  # put the child in the kill-on-close Job object (Windows)
    popen: dict[str, Any]


def ssh_multiplexing(platform: str = sys.platform) -> bool:
    """Whether the system ssh can be a ControlMaster (a Unix-socket mux; Windows' ssh.exe has none)."""
    return platform != "win32"


def ssh_child_plan(platform: str = sys.platform) -> ChildPlan:
    if platform == "win32":
        return ChildPlan(
            watchdog=False,
            job=True,
            popen={"creationflags": CREATE_NO_WINDOW | CREATE_NEW_PROCESS_GROUP},
        )
    # No controlling terminal, no Ctrl-C from the shell.
    return ChildPlan(watchdog=True, job=False, popen={"start_new_session": True})


# Runs a child ("$@"), ends it when our pipe on stdin closes (we exited, even by SIGKILL, or asked
# it to stop), exits with the child's status. The child itself gets /dev/null as stdin. (A
# background job's stdin is /dev/null in sh, hence the copy of our pipe on fd 3.) POSIX only: on
# Windows `adopt_child` (a kill-on-close Job object) does this. Used for ssh and AWS's
# session-manager-plugin.
PIPE_WATCHDOG = (
    "exec 3<&0\n"
    '"$@" </dev/null 3<&- & p=$!\n'
    "{ read -r _ <&3; kill $p 2>/dev/null; } & w=$!\n"
    "exec 3<&-\n"
    "wait $p; c=$?\n"
    "kill $w 2>/dev/null\n"
    "exit $c\n"
)


def end_child(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """Never leave a child of ours running: terminate it, and kill it after `grace` seconds."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(OSError):
        proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()


def kill_hard(proc: subprocess.Popen[Any]) -> None:
    """The last resort for a child that would not stop: its whole group on POSIX."""
    if sys.platform == "win32":
        with contextlib.suppress(OSError):
            proc.kill()  # TerminateProcess; the Job object takes whatever it started
    else:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def ssh_search_path(
    path: str | None, platform: str = sys.platform, environ: Mapping[str, str] | None = None
) -> str | None:
    """The PATH to look for `ssh` in: PATH itself, plus Windows' own OpenSSH directory there."""
    if platform != "win32":
        return path
    env = os.environ if environ is None else environ
    base = path if path is not None else env.get("PATH", "")
    root = env.get("SystemRoot") or env.get("SYSTEMROOT") or r"C:\Windows"
    extra = root.rstrip("\\/") + r"\System32\OpenSSH"
    parts = [p for p in base.split(";") if p]
    if extra.lower() not in (p.lower().rstrip("\\/") for p in parts):
        parts.append(extra)
    return ";".join(parts)


# ----------------------------------------------------------------------------- file locks


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on the open file `fd` without waiting; False if someone holds it."""
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    else:  # noqa: RET505  (mypy narrows each platform branch)
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def unlock(fd: int) -> None:
    """Release `try_lock`'s lock."""
    if sys.platform == "win32":
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- Job object

_job_lock = threading.Lock()
_job_handle: int | None = None

if sys.platform == "win32":
    import ctypes
    from ctypes import wintypes

    class _IO_COUNTERS(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_ulonglong)
            for name in (
                "ReadOperationCount",
                "WriteOperationCount",
                "OtherOperationCount",
                "ReadTransferCount",
                "WriteTransferCount",
                "OtherTransferCount",
            )
        ]

    class _BASIC_LIMIT(ctypes.Structure):
        _fields_ = [
            ("PerProcessUserTimeLimit", ctypes.c_longlong),
            ("PerJobUserTimeLimit", ctypes.c_longlong),
            ("LimitFlags", wintypes.DWORD),
            ("MinimumWorkingSetSize", ctypes.c_size_t),
            ("MaximumWorkingSetSize", ctypes.c_size_t),
            ("ActiveProcessLimit", wintypes.DWORD),
            ("Affinity", ctypes.c_size_t),
            ("PriorityClass", wintypes.DWORD),
            ("SchedulingClass", wintypes.DWORD),
        ]

    class _EXTENDED_LIMIT(ctypes.Structure):
        _fields_ = [
            ("BasicLimitInformation", _BASIC_LIMIT),
            ("IoInfo", _IO_COUNTERS),
            ("ProcessMemoryLimit", ctypes.c_size_t),
            ("JobMemoryLimit", ctypes.c_size_t),
            ("PeakProcessMemoryUsed", ctypes.c_size_t),
            ("PeakJobMemoryUsed", ctypes.c_size_t),
        ]

    def _kernel32() -> ctypes.WinDLL:
        k = ctypes.WinDLL("kernel32", use_last_error=True)
        k.CreateJobObjectW.restype = wintypes.HANDLE
        k.CreateJobObjectW.argtypes = [ctypes.c_void_p, wintypes.LPCWSTR]
        k.SetInformationJobObject.restype = wintypes.BOOL
        k.SetInformationJobObject.argtypes = [
            wintypes.HANDLE,
            ctypes.c_int,
            ctypes.c_void_p,
            wintypes.DWORD,
        ]
        k.AssignProcessToJobObject.restype = wintypes.BOOL
        k.AssignProcessToJobObject.argtypes = [wintypes.HANDLE, wintypes.HANDLE]
        return k

    def _kill_on_close_job() -> int:
        """This process's one Job object; never closed: our exit closes it and kills its members."""
        global _job_handle
        with _job_lock:
            if _job_handle is None:
                k = _kernel32()
                job = k.CreateJobObjectW(None, None)
                if not job:
                    raise ctypes.WinError(ctypes.get_last_error())
                info = _EXTENDED_LIMIT()
                info.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
                if not k.SetInformationJobObject(
                    job,
                    _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION,
                    ctypes.byref(info),
                    ctypes.sizeof(info),
                ):
                    raise ctypes.WinError(ctypes.get_last_error())
                _job_handle = int(job)
            return _job_handle

    def adopt_child(proc: subprocess.Popen[Any]) -> bool:
        """Tie `proc` to our lifetime (the kill-on-close Job object); False if that failed."""
        try:
            job = _kill_on_close_job()
            handle = int(proc._handle)  # type: ignore[attr-defined]
            if not _kernel32().AssignProcessToJobObject(job, handle):
                raise ctypes.WinError(ctypes.get_last_error())
        except OSError as exc:
            # Imported here: the warm one-shot path imports this module and needs no logging.
            from tunnelman.core.logs import get_logger

            get_logger("platform").warning(
                "ssh (pid %d) will not end with tunnelman: %s", proc.pid, exc
            )
            return False
        return True

else:

    def adopt_child(proc: subprocess.Popen[Any]) -> bool:
        """POSIX: the `sh` watchdog ties ssh to us instead (see the module docstring)."""
        return False
