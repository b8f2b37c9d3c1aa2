"""The search: Optuna trials priced by a cost model, the winners measured, the model refit.

==================  =====================================================================
``config``          :class:`SearchConfig` (what is asked), :class:`SearchResult`
``loop``            :func:`search` — the refine loop, round after round
``evaluator``       accuracy and predicted cost of a plan
``trials``          the sampler; plans asked, priced in batches, told
``seeds``           where round 1 starts (greedy, the budget's edge)
``polish``          local search around the best feasible plans
``front``           the Pareto front, a plan's kernels, the front beside its measurements
``picks``           which front plans a round measures
``measuring``       the dense baseline per runtime; a round's picks measured
``refit``           measurements → samples → the refit cost model
``storage``         Optuna storages by URL
``summary``         ``summary.json`` (:class:`SearchSummary`), read by export and report
==================  =====================================================================
"""
from __future__ import annotations

from hwsearch.searching.config import DENSE_PLAN, RoundResult, SearchConfig, SearchResult
from hwsearch.searching.evaluator import Evaluator
from hwsearch.searching.front import config_key, kernel_configs
from hwsearch.searching.loop import search
from hwsearch.searching.refit import fit_cost_model
from hwsearch.searching.storage import open_storage
from hwsearch.searching.summary import SearchSummary

__all__ = ["search", "SearchConfig", "SearchResult", "RoundResult", "SearchSummary", "Evaluator", "open_storage",
           "fit_cost_model", "config_key", "kernel_configs", "DENSE_PLAN"]
