"""Every difference between Linux, macOS and Windows, in one place; the rest of tunnelman calls it.

Submodules (import the one you need; none imports paramiko, sshtunnel or anything heavy):

- `keys`: private-key privacy (the POSIX mode rule; on Windows the file's ACL, read through the
  Win32 API and judged as OpenSSH for Windows does) and the fix to name.
- `agents`: which ssh-agent this machine offers (SSH_AUTH_SOCK, the Windows OpenSSH agent's named
  pipe, Pageant) and how to say that none is running.
- `net`: socket options (TCP keepalive names per OS, exclusive listening ports on Windows,
  the relay's non-blocking send flag) and peer credentials of a local socket.
- `process`: child processes that must die with tunnelman (session / Job object), creation flags
  (no console window), where the OpenSSH client lives.
- `terminal`: signals and the console: which signals mean "stop", how Ctrl-C reaches a child.
"""
