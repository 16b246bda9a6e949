"""The app's actions, one module per subject; `tunnelman.tui.app.TunnelmanApp` composes them.

- `base.py`: what they share: profiles, the state model (`UIState`), the host and AWS, redrawing,
  failures of workers, and asking a person from a worker thread;
- `tunnels.py`: open, cancel, close, follow and poll tunnels;
- `cluster.py`: cluster status, start and stop;
- `profiles.py`: new, edit, delete, password, discovery, reload;
- `settings.py`: connection settings shown, copied and written;
- `db.py`: the palette's database operations (`tunnelman db …`): form, dry run, run;
- `health.py`: live figures of up tunnels: the rate history and the periodic health check.

Each is a mixin on `AppBase` (a Textual `App`) so its blocking work can be a Textual `@work`
thread worker; a worker never changes the state model, it posts a message (`tui/messages.py`).
"""
