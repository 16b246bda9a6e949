"""Widgets of the main screen: the profile list and the detail pane."""
