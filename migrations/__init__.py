"""Alembic environment and revisions; packaged as `neruba_cli.migrations`."""
