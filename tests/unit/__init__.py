"""Pure rules on plain values: no database, no CLI. `pytest tests/unit` runs in seconds."""
