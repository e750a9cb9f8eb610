"""Strategies: relaxations of alpha and its gradients, found by name in ``registry``."""

from dnas.strategies import registry
from dnas.strategies.base import BilevelProblem, derive_weights, eval_weights, Strategy
from dnas.strategies.darts import darts, make_virtual_step, softmax_mix

__all__ = ["BilevelProblem", "Strategy", "darts", "derive_weights", "eval_weights",
           "make_virtual_step", "registry", "softmax_mix"]
