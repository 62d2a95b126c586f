"""``python -m rfsearch`` (and ``torchrun -m rfsearch``) run the command line."""

from rfsearch.cli import main

main()
