"""The command line: parse with click, call core, format text or `--json`. Imports the TUI lazily."""
