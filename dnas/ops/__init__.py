"""Op registry, built-in ops and op sets."""

from dnas.ops.registry import build, get, names, register, temporary, unregister, UnknownOpError
from dnas.ops.sets import DARTS, NB201, OpSet

__all__ = ["build", "get", "names", "register", "temporary", "unregister", "UnknownOpError",
           "OpSet", "DARTS", "NB201"]
