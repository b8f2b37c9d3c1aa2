"""The ground floor: the vocabulary every layer shares, importing nothing above it.

- :mod:`~hwsearch.core.errors` — errors users can act on (one line, exit 2 in the CLI);
- :mod:`~hwsearch.core.patterns` — the one registry of sparsity patterns: validity checks,
  mask builders, exact storage bytes (scalar and vectorised);
- :mod:`~hwsearch.core.plan` — :class:`Plan` and :class:`LayerChoice`;
- :mod:`~hwsearch.core.resolve` — a plan on a model's layer table: kept channels, densities;
- :mod:`~hwsearch.core.budgets` — latency / flash / SRAM budgets and their violations;
- :mod:`~hwsearch.core.records` — measurement-record files (append-only JSON lines).

``costmodels/`` and ``targets/`` import these modules and nothing else of :mod:`hwsearch`.
"""
