"""Workflow → compiled plan (dependency DAG, order, loop table) and its drawings."""

from .plan import Loop, Plan, compile_plan
from .render import render_image, to_ascii, to_dot, to_mermaid

__all__ = ["Loop", "Plan", "compile_plan", "render_image", "to_ascii", "to_dot", "to_mermaid"]
