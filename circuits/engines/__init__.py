"""Exact engines: activation patching, path patching, ablations, faithfulness,
attention peeking (All-for-One) and head detectors.

Every engine takes (model, PromptSet, metric) and returns plain data (``Scores``
or a small dataclass). Import the engine modules directly, e.g.
``from circuits.engines.patching import activation_patching``; this package
imports nothing heavy on its own.
"""
