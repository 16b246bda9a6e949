"""tunnelman: reach a private PostgreSQL/PostGIS database through an SSH bastion."""

__version__ = "0.1.0"
