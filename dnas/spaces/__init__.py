"""Search spaces: supernets built from the generic cell machinery."""

from dnas.spaces.cell import edge_count, edge_groups, edge_index, MixedEdges, SearchCell
from dnas.spaces.darts import DartsSearchNet
from dnas.spaces.nb201 import NB201SearchNet

__all__ = ["edge_count", "edge_groups", "edge_index", "MixedEdges", "SearchCell",
           "DartsSearchNet", "NB201SearchNet"]
