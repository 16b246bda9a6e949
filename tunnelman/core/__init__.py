"""The headless core: profiles, SSH, tunnels, credentials, client renderers, AWS.

Nothing under this package imports Textual, click or rich (tests/test_layers.py proves it). Core code
returns values, raises `TunnelmanError` subclasses, or calls callbacks it was given; it never prints,
exits or touches the terminal.
"""
