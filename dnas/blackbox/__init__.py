"""Ask/tell search over discrete spaces, pure-functional JAX (jit, scan and vmap over runs).

Example::

    from dnas import benchmarks, blackbox
    table = benchmarks.load_nb201()
    space = blackbox.nb201_space(table)
    strategy = blackbox.get("regularized_evolution", population_size=10, sample_size=3)
    result = blackbox.nb201_protocol(strategy, table, 100, jax.random.split(key, 50))
    blackbox.summarize(result.histories, result.reported)
"""

from dnas.blackbox import registry
from dnas.blackbox.base import Strategy
from dnas.blackbox.protocol import ProtocolResult, nb201_protocol, summarize
from dnas.blackbox.registry import get, names, register
from dnas.blackbox.runner import History, make_run_on_table, run, run_on_table
from dnas.blackbox.spaces import (
    NB201_EDGES, Space, SpaceError, categorical_space, darts_space, nb201_space)
from dnas.blackbox.strategies import (
    exhaustive, local_search, mutate, random_search, regularized_evolution, tournament)
from dnas.blackbox import bananas, reinforce  # modules: reinforce.reinforce, bananas.bananas
from dnas.blackbox.multiobjective import (
    crowding_distance, feasible_mask, hypervolume_2d, non_dominated_sort, nsga2, pareto_front,
    run_multi_on_table)
from dnas.blackbox.norepeat import no_repeat
from dnas.blackbox.evaluators import evaluator_names, get_evaluator, register_evaluator

__all__ = ["History", "NB201_EDGES", "ProtocolResult", "Space", "SpaceError", "Strategy",
           "bananas", "categorical_space", "crowding_distance", "darts_space",
           "evaluator_names", "exhaustive", "feasible_mask", "get", "get_evaluator",
           "hypervolume_2d", "local_search", "make_run_on_table", "mutate", "names",
           "nb201_protocol", "nb201_space", "no_repeat", "non_dominated_sort", "nsga2",
           "pareto_front",
           "random_search", "register", "register_evaluator", "registry",
           "regularized_evolution", "reinforce", "run", "run_multi_on_table", "run_on_table",
           "summarize", "tournament"]
