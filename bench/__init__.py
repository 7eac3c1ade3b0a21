"""The benchmark suite: eclflow beside LangGraph on the same critique-revise workload.

Run `python -m bench` (see docs/performance.md); it is not part of the test suite.
"""
