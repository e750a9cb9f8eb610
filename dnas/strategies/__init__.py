"""Strategies: relaxations of alpha and its gradients."""

from dnas.strategies.base import BilevelProblem, Strategy
from dnas.strategies.darts import darts, softmax_mix

__all__ = ["BilevelProblem", "Strategy", "darts", "softmax_mix"]
