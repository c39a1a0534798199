"""The graph module: one Circuit type, comparison of circuits, exports and drawings for papers.

It reads names (``circuits.names``), scores and records only; it never imports the engines
or the tasks. ``circuits.graph.circuit`` is plain data, which the engines may return.
"""

from circuits.graph.circuit import Circuit, NodeInfo, Shape

__all__ = ["Circuit", "NodeInfo", "Shape"]
# the rest, imported where used (each pulls in networkx, scipy or matplotlib):
#   circuits.graph.compare - overlaps, weighted Jaccard, threshold sweeps with a null, regimes, similarity
#   circuits.graph.draw - heatmaps with circuit heads, sweep curves, similarity dendrogram, E and cohorts
#   circuits.graph.serialize - JSON, networkx, GraphML; circuits.graph.mib - MIB / EAP-IG graph JSON
#   circuits.graph.export - DOT, TikZ, PDF/SVG/PNG and every format to a file (circuits export)
