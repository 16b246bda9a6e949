"""Every OS difference (Linux, macOS, Windows) in one place; the rest of tunnelman asks here.

Each submodule owns one subject and takes the facts it depends on (the platform name, an
environment mapping, a filesystem root, `shutil.which`) as arguments with the running system's
values as defaults, so its logic is tested for every OS on any OS:

- `keys`      private-key privacy: POSIX mode bits, Windows ACLs, and the fix to print (chmod / icacls)
- `net`       socket options and local listeners (keepalive names, SO_EXCLUSIVEADDRUSE, MSG_DONTWAIT)
- `process`   signals and process control (process groups, terminate/kill, detached children)
- `terminal`  the controlling terminal (foreground group, Ctrl-C delivery, /dev/tty vs CON)
- `agents`    SSH agents: SSH_AUTH_SOCK, the Windows OpenSSH agent pipe, Pageant
- `programs`  client programs (psql, pg_dump, …): PATH, then where the installers put them
              (Windows Program Files\\PostgreSQL, Homebrew libpq / postgresql@N, Postgres.app);
              whether a process id still runs
- `shells`    which shell `tunnelman env` writes for (posix, powershell, cmd) and its quoting
- `paths`     libpq's per-user files (pgpass, pg_service), the Microsoft Store Python redirect of
              %APPDATA%, Unix-socket availability and a temp dir short enough for socket paths
- `clipboard` copying text: OSC 52 where the terminal takes it, else clip.exe, pbcopy, wl-copy,
              xclip or xsel
"""
