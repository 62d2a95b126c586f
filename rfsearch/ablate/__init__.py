"""The paper's ablation in one run: every row (a fixed enhancer, or a strategy) over several seeds,
retrained with one recipe and budget, summarised as a table (Markdown, CSV) and plots.

Rows. The first five are the paper's Table 3, under its names and with its meanings; ``pmpl3``
is PMPL over Random's three enhancers (its like-for-like partner); the rest are this project's.

==============  ==============================================================================
``no``          No: ``skip`` at every point and no post layers (the plain backbone)
``local``       Local: ``avgpool3`` at every point, no search
``global``      Global: ``global`` (spatial separable pooling) at every point, no search
``random``      Random: per point one of skip / avgpool3 / global, drawn from the seed
``pmpl``        PMPL over the space's candidates (the method)
``pmpl3``       PMPL over skip / avgpool3 / global
``random8``     one of the space's candidates per point, drawn from the seed
``pmpl-local``  PMPL over the space's local candidates (skip, avg and max pools)
``uniform``     single-path uniform sampling over the space's candidates, then greedy choice
``se``          SE (Hu et al.) at every point; ``se-mnv3`` MobileNetV3's SE block
``cbam``        CBAM (Woo et al.) at every point
``coordatt``    Coordinate Attention at every point
==============  ==============================================================================

A searched row runs :func:`rfsearch.search.loop.run_search` with ``strategy.name`` set; every row
then runs :func:`rfsearch.train.retrain.run_retrain` with the space's ``train.retrain``. Seed ``s``
sets ``train.seed = s`` for both; the data (``data.embedded.seed``) stays the same for all.

Layout of an ablation directory::

    ablation.json            rows, seeds, space file, and the results once known
    config.yaml              the space as resolved (defaults and --set applied)
    <row>/seed<s>/search/    a search run (searched rows only)
    <row>/seed<s>/retrain/   a retrain run: metrics.json with "finished": true marks the cell done
    ablation.md, ablation.csv, accuracy.png, pi-<row>-seed<s>.png

An interrupted ablation continues with ``resume``: finished cells are read back, an unfinished
search or retrain continues from its own checkpoint.
"""

from rfsearch.ablate.render import csv_text, markdown, reading, rich_table, table_rows, write_outputs
from rfsearch.ablate.results import AblationResult, Cell, RowSummary, default_seeds, row_results
from rfsearch.ablate.rows import BASELINE, DEFAULT_ROWS, ROWS, Row, fixed_row_arch, parse_rows, search_space, seed_space
from rfsearch.ablate.run import MANIFEST, run_ablation

__all__ = [
    "BASELINE",
    "DEFAULT_ROWS",
    "MANIFEST",
    "ROWS",
    "AblationResult",
    "Cell",
    "Row",
    "RowSummary",
    "csv_text",
    "default_seeds",
    "fixed_row_arch",
    "markdown",
    "parse_rows",
    "reading",
    "rich_table",
    "row_results",
    "run_ablation",
    "search_space",
    "seed_space",
    "table_rows",
    "write_outputs",
]
