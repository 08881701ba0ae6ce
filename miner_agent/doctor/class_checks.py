"""Pure verdict on our executor classes against the validators' class weights.

Validators score each class apart and multiply by its weight from the dynamic value
DYNAMIC_EXECUTOR_CLASS_WEIGHTS, a string of `class=weight` pairs separated by commas (the
stock "key1=value1,key2=value2", weights are floats). A class absent from it, or weighted 0,
is not scored at all: jobs run there earn nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from horde_protocol.enums import ExecutorClass
from miner_agent.doctor.model import CheckRow, not_checked, ok, warn

WEIGHTS_KEY = "DYNAMIC_EXECUTOR_CLASS_WEIGHTS"
# What production validators use since 2026-01; assumed when the dynamic config does not say.
PRODUCTION_WEIGHTS = "always_on.cpu.8c.16gb=100"


def parse_class_weights(text: str) -> tuple[dict[str, float], list[str]]:
    """({class: weight}, problems). A malformed pair or an unknown class is reported and skipped,
    as the validator skips it."""
    weights: dict[str, float] = {}
    problems: list[str] = []
    for pair in text.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key = key.strip()
        try:
            weight = float(value)
        except ValueError:
            problems.append(f"{pair!r} is not class=number")
            continue
        if not sep or key not in ExecutorClass._value2member_map_:
            problems.append(f"{key!r} is not an executor class")
            continue
        weights[key] = weight
    return weights, problems


def classes_row(configured: Collection[str], value: Any) -> CheckRow:
    """`value` is the dynamic config's DYNAMIC_EXECUTOR_CLASS_WEIGHTS, None when it sets none."""
    name = "executor classes weighted"
    assumed = value is None
    weights, problems = parse_class_weights(PRODUCTION_WEIGHTS if assumed else str(value))
    source = f"{PRODUCTION_WEIGHTS} (assumed: the dynamic config sets no {WEIGHTS_KEY})" if assumed \
        else f"{WEIGHTS_KEY}={value}"
    if not configured:
        return not_checked(name, "no [[executors]] configured")
    earning = sorted(c for c, w in weights.items() if w > 0)
    idle = sorted(c for c in set(configured) if weights.get(c, 0.0) <= 0)
    named = ", ".join(f"{c}={weights[c]:g}" for c in earning) or "none"
    if idle:
        verb = "earns" if len(idle) == 1 else "earn"
        suggestion = earning[0] if earning else PRODUCTION_WEIGHTS.split("=")[0]
        return warn(name, f"{', '.join(idle)} {verb} nothing: absent or weighted 0 in {source}; weighted: {named}",
                    f"if the host fits a weighted class, set executor_class = \"{suggestion}\" in its [[executors]] "
                    "entry and restart miner-agent")
    detail = f"all configured classes are weighted ({', '.join(f'{c}={weights[c]:g}' for c in sorted(set(configured)))})"
    if problems:
        detail += f"; ignored in the value: {'; '.join(problems)}"
    return ok(name, detail + (" (assumed production weights)" if assumed else ""))
