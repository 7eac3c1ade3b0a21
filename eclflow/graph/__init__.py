"""Workflow → compiled plan (networkx DAG, order, loop table) and its drawings."""

from .plan import Loop, Plan, compile_plan

__all__ = ["Loop", "Plan", "compile_plan"]
