"""`python -m gemmactl` → the CLI."""

from gemmactl.cli.app import main

main()
