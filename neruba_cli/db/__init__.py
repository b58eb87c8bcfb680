"""The imperative shell's storage edge: engine, schema, migrations and lease locks."""
