"""One rich console for all output, so progress bars and tables never interleave."""

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(highlight=False)


def progress_bar(title: str, stats: str, enabled: bool) -> Progress:
    """The bar every training loop shows: ``title`` and ``stats`` are rich format strings over the
    task's fields (``{task.fields[loss]:.3f}``); disabled bars (quiet runs, ranks > 0) print nothing."""
    return Progress(
        TextColumn(title),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(stats),
        TimeElapsedColumn(),
        console=console,
        disable=not enabled,
    )
