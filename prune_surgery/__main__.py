"""`python -m prune_surgery` runs the CLI."""

from .cli import main

main()
