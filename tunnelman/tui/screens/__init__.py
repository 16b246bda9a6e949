"""Screens of the TUI: the main screen, help, modals, the profile form and discovery."""
