"""Pure rules: no I/O, no clock, no database. Everything here takes and returns plain values."""
