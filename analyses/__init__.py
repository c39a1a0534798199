"""Analysis scripts, run as ``python -m analyses.<name>``: IOI and circuit discovery.

Shared helpers live in analyses.common.
"""
