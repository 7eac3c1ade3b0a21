"""The work every engine does, defined once so both sides of a figure do exactly the same calls.

critique-revise with a fake model: generate → critique (revise) → revise → critique (revise) →
revise → critique (pass), six model calls per run; the fake model sleeps LATENCY and returns a
fixed string. The 200-step chain of figure C renders one small template per step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CRITIQUE_REVISE = ROOT / "workflows" / "critique_revise.yaml"

CALLS_PER_RUN = 6
CHAIN_STEPS = 200
TOPIC = "the history of the printing press"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"

DRAFT = (
    "The printing press, introduced by Johannes Gutenberg around 1440, made books cheap "
    "enough for ordinary readers; the Gutenberg Bible is the best-known example."
)
REVISE_VERDICT = json.dumps(
    {
        "decision": "revise",
        "critique": "Clear but thin: one example, no consequences.",
        "feedback": "Add what the press changed (literacy, the Reformation, science).",
    }
)
PASS_VERDICT = json.dumps(
    {"decision": "pass", "critique": "Clear, specific, on topic.", "feedback": ""}
)

# The fake model's replies by journal key: the same six calls, in the same order, on both sides.
REPLIES: dict[str, str] = {
    "generate": DRAFT,
    "critique#1": REVISE_VERDICT,
    "revise#1": DRAFT + " It spread literacy across Europe.",
    "critique#2": REVISE_VERDICT,
    "revise#2": DRAFT + " It spread literacy and carried the Reformation and the new science.",
    "critique#3": PASS_VERDICT,
}
CALL_ORDER = ["generate", "critique#1", "revise#1", "critique#2", "revise#2", "critique#3"]


# Both fake models answer with fixed text; eclflow's `mock/` also reports fixed token counts, as
# a real provider does, instead of counting the prompt's words for every call (LangGraph's fake
# counts nothing). Roughly what the six calls' prompts and replies hold.
TOKENS = {"input": 150, "output": 40}


def mock_script(latency: float) -> dict[str, Any]:
    """eclflow's keyed `mock/` script: each journal key's reply, after `latency` seconds."""
    extra: dict[str, Any] = {"delay": latency} if latency > 0 else {}
    return {key: {"content": text, "tokens": TOKENS, **extra} for key, text in REPLIES.items()}


def floor_seconds(latency: float) -> float:
    """The physical floor of one run: its six model calls back to back."""
    return CALLS_PER_RUN * latency


def chain_yaml(steps: int = CHAIN_STEPS) -> str:
    """A linear chain of `template` steps, each rendering its predecessor's text."""
    lines = [
        "eclflow: 1",
        "id: chain",
        "name: Template chain",
        "inputs:",
        "  type: object",
        "  required: [topic]",
        "  properties: {topic: {type: string}}",
        "steps:",
        '  - {id: s0, type: template, template: "{{ t }}", with: {t: "{{ input.topic }}"}}',
    ]
    for i in range(1, steps):
        lines.append(
            f"  - {{id: s{i}, type: template, depends_on: [s{i - 1}], "
            f'template: "{{{{ t }}}}", with: {{t: "{{{{ steps.s{i - 1}.output.text }}}}"}}}}'
        )
    lines.append("output:")
    lines.append(f'  text: "{{{{ steps.s{steps - 1}.output.text }}}}"')
    return "\n".join(lines) + "\n"
