"""Every difference between Linux, macOS and Windows, in one place; the rest of tunnelman calls it.

Each submodule owns one subject. Where the logic is more than a lookup, it takes the facts it
depends on (the platform name, an environment mapping, a filesystem root, `shutil.which`, parsed
ACL entries) as arguments with the running system's values as defaults, so it is tested for every
OS on any OS. None imports paramiko, sshtunnel or anything heavy:

- `keys`      private-key privacy: the POSIX mode rule; on Windows the file's ACL, read through the
              Win32 API and judged as OpenSSH for Windows does; the fix to print (chmod / icacls)
- `agents`    which ssh-agent this machine offers (SSH_AUTH_SOCK, the Windows OpenSSH agent's
              named pipe, Pageant) and how to say that none is running
- `net`       socket options (TCP keepalive names per OS, exclusive listening ports on Windows,
              the relay's non-blocking send flag), peer credentials of a local socket
- `process`   child processes that must die with tunnelman (session / Job object), creation flags
              (no console window), where the OpenSSH client lives, file locks
- `terminal`  signals and the console: which signals mean "stop", how Ctrl-C reaches a child,
              holding a console close back until clean-up ran
- `programs`  client programs (psql, pg_dump, …): PATH, then where the installers put them
              (Windows Program Files\\PostgreSQL, Homebrew libpq / postgresql@N, Postgres.app);
              whether a process id still runs
- `shells`    which shell `tunnelman env` writes for (posix, powershell, cmd) and its quoting
- `paths`     libpq's per-user files (pgpass, pg_service), the Microsoft Store Python redirect of
              %APPDATA%, Unix-socket availability and a temp dir short enough for socket paths
- `clipboard` copying text: OSC 52 where the terminal takes it, else clip.exe, pbcopy, wl-copy,
              xclip or xsel
"""
