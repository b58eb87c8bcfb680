"""`neruba ...` end to end through the in-process `Cli` runner, on each database."""
