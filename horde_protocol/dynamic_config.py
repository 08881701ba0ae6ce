"""The stock dynamic-configuration document (compute-horde-dynamic-config), read by both agents.

Each key maps to {"description": str, "items": [{"value": any, "effective_from": iso | null}]}:
items apply in order, one whose effective_from is still in the future is skipped, and the
last applicable one wins. The miner reads every DYNAMIC_* value from it; the executor's
preload timer reads only the job-image list. Pure: no I/O.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

KEY_PREFIX = "DYNAMIC_"
PRELOAD_IMAGES_KEY = "DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES"


class DynamicConfigFormatError(ValueError):
    """A document that does not have the stock shape; str() names the key and the item."""


def parse_effective_from(text: object) -> datetime | None:
    """None for "always"; naive times are UTC, as the stock fetcher reads them."""
    if text is None:
        return None
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def current_value(key: str, items: object, now: datetime) -> tuple[bool, Any]:
    """(True, value) of the last item of `key` in effect at `now`; (False, None) when none is."""
    if not isinstance(items, list):
        raise DynamicConfigFormatError(f"{key}.items is not a list")
    found, value = False, None
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "value" not in item:
            raise DynamicConfigFormatError(f"{key}.items[{index}] has no value")
        try:
            effective = parse_effective_from(item.get("effective_from"))
        except ValueError:
            raise DynamicConfigFormatError(
                f"{key}.items[{index}].effective_from {item.get('effective_from')!r} is not a date"
            ) from None
        if effective is None or effective <= now:
            found, value = True, item["value"]
    return found, value
