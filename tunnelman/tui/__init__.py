"""The Textual TUI: profiles, tunnels, connection settings, cluster status, editing and discovery.

Imported only by `tunnelman` (no command) / `tunnelman tui` and by the TUI tests; the CLI's one-shot
commands never pay for Textual. Blocking work (SSH, keyring, AWS) runs in thread workers that post
messages back to the app; nothing here talks to the network on the UI thread.
"""
