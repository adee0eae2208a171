"""`python -m trainbench` is the `trainbench` command."""

from trainbench.cli import main

main()
