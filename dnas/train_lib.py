"""The loops' public names in one place (``from dnas import train_lib``).

The code lives in files named for their stage: ``dnas.run_config`` (validating a config and
building what it names), ``dnas.search_loop`` (``run_search``, ``draw``), ``dnas.train_loop``
(``run_train``) and ``dnas.run_io`` (checkpoints, resume checks, logs, signals).
"""

from dnas.run_config import (ConfigError, DARTS_KEYS, LAYOUT_KEYS, OPTIMIZERS, RESUMABLE_KEYS,
                             SEARCH_SPLITS, TRACE_FREE_KEYS, TRAIN_SPACES, build_search_model,
                             build_train_model, compute_dtype, load_config, load_module,
                             make_strategy, resolve_op_set, search_indices, search_weight_optimizer,
                             strategy_name, strategy_options, train_optimizer,
                             validate_search_config, validate_train_config)
from dnas.run_io import (CheckpointError, enable_compilation_cache, start_clean,
                         summary_writer, trace_key)
from dnas.search_loop import NonFiniteError, draw, run_search
from dnas.train_loop import run_train

__all__ = ["ConfigError", "CheckpointError", "NonFiniteError", "DARTS_KEYS", "LAYOUT_KEYS",
           "OPTIMIZERS", "RESUMABLE_KEYS", "SEARCH_SPLITS", "TRACE_FREE_KEYS", "TRAIN_SPACES",
           "build_search_model", "build_train_model", "compute_dtype", "draw",
           "enable_compilation_cache", "load_config", "load_module", "make_strategy", "resolve_op_set",
           "run_search", "run_train", "search_indices", "search_weight_optimizer",
           "start_clean", "strategy_name", "strategy_options", "summary_writer", "trace_key",
           "train_optimizer", "validate_search_config", "validate_train_config"]
