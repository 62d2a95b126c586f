"""One rich console for all output, so progress bars and tables never interleave."""

from rich.console import Console

console = Console(highlight=False)
