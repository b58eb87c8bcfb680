"""`python -m neruba_cli` runs the same CLI as the `neruba` console script."""

from neruba_cli.cli.app import main

main()
