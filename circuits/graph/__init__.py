"""The graph module: one Circuit type, comparison of circuits, exports and drawings for papers.

It reads names (``circuits.names``), scores and records only; it never imports the engines
or the tasks. ``circuits.graph.circuit`` is plain data, which the engines may return.
"""

from circuits.graph.circuit import Circuit, NodeInfo, Shape

__all__ = ["Circuit", "NodeInfo", "Shape"]
