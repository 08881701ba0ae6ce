"""Dynamic configuration: the stock `DYNAMIC_*` values, from a local file or the stock HTTP source.

The stock miner refreshes these every 5 minutes into constance (behaviour.md §3). The one that
matters to us is DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES: job images executors must have pulled before
a job arrives, or the 5 s startup budget is spent pulling. The others are kept (typed where the
miner reads them, raw otherwise) so `status` can show what the subnet currently asks for.

Source format (the stock compute-horde-dynamic-config repository): a JSON object,
key -> {"description": str, "items": [{"value": any, "effective_from": datetime|null, ...}]};
items apply in order, a future effective_from is skipped, the last applicable item wins;
keys not starting with DYNAMIC_ are ignored. Local files may also give plain `KEY = value` pairs.
A failed or invalid fetch never replaces the last good configuration.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from horde_protocol.dynamic_config import KEY_PREFIX, DynamicConfigFormatError, current_value
from miner_agent.chain.chain_config import DynamicConfigSource

log = logging.getLogger(__name__)

STOCK_URL_TEMPLATES = (
    "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/miner-config-{env}.json",
    "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/common-config-{env}.json",
)
STOCK_USER_AGENT = "backend-developers-ltd"  # the header the stock fetcher sends
MAX_DOCUMENT_BYTES = 1024 * 1024  # a dynamic config document is a few KiB; refuse anything absurd


class DynamicConfigError(Exception):
    """A source could not be read or parsed; the last good configuration stays in force."""


class DynamicConfig(BaseModel):
    """The values the miner reads, typed, plus every DYNAMIC_* value seen (`values`)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    preload_job_images: tuple[str, ...] = Field((), alias="DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES")
    executor_startup_time_limit_s: int = Field(5, ge=0, alias="DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT")
    receipt_transfer_enabled: bool = Field(False, alias="DYNAMIC_RECEIPT_TRANSFER_ENABLED")
    dummy: int = Field(0, alias="DYNAMIC_DUMMY")
    values: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], previous: DynamicConfig | None = None) -> DynamicConfig:
        """Typed config from raw values. A known key with a bad value keeps its previous value
        (or the default) and is logged, so one typo upstream cannot take the preload list away."""
        base = previous or cls()
        typed: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            if info.alias is None or info.alias not in values:
                continue
            try:  # validate this one key alone, so a bad neighbour cannot reject it
                value = getattr(cls.model_validate({info.alias: values[info.alias]}), name)
            except ValidationError as exc:
                log.warning("dynamic config value ignored key=%s reason=%r", info.alias, exc.errors()[0]["msg"])
                value = getattr(base, name)
            typed[name] = value
        return cls(**typed, values={k: v for k, v in values.items() if k.startswith(KEY_PREFIX)})


def resolve_document(doc: object, now: datetime) -> dict[str, Any]:
    """The DYNAMIC_* values a document sets at `now`. Raises DynamicConfigError on a bad shape."""
    if not isinstance(doc, dict):
        raise DynamicConfigError("document is not a JSON object")
    out: dict[str, Any] = {}
    for key, entry in doc.items():
        if not key.startswith(KEY_PREFIX):
            continue
        if not (isinstance(entry, dict) and "items" in entry):
            out[key] = entry  # plain `KEY = value` (local files)
            continue
        try:
            found, value = current_value(key, entry["items"], now)
        except DynamicConfigFormatError as exc:
            raise DynamicConfigError(str(exc)) from None
        if found:
            out[key] = value
    return out


def merge_documents(docs: Sequence[object], now: datetime) -> dict[str, Any]:
    """Later documents override earlier ones (stock: common-config wins over miner-config)."""
    merged: dict[str, Any] = {}
    for doc in docs:
        merged.update(resolve_document(doc, now))
    return merged


def read_file(path: Path) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DynamicConfigError(f"{path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise DynamicConfigError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from None


async def fetch_document(session: aiohttp.ClientSession, url: str, timeout_s: float) -> object:
    try:
        async with session.get(
            url, headers={"User-Agent": STOCK_USER_AGENT}, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            if resp.status != 200:
                raise DynamicConfigError(f"{url}: HTTP {resp.status}")
            body = await resp.content.read(MAX_DOCUMENT_BYTES + 1)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DynamicConfigError(f"{url}: {type(exc).__name__}: {exc}") from None
    if len(body) > MAX_DOCUMENT_BYTES:
        raise DynamicConfigError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DynamicConfigError(f"{url}: not valid JSON: {exc}") from None


def source_urls(source: DynamicConfigSource) -> list[str]:
    return list(source.urls) or [t.format(env=source.env) for t in STOCK_URL_TEMPLATES]


async def load_values(
    source: DynamicConfigSource, session: aiohttp.ClientSession | None, now: datetime | None = None
) -> dict[str, Any] | None:
    """Raw values from the configured source; None for source "none" (defaults only).

    All documents of a source must load, or none are used: half of the stock pair would silently
    drop the overrides of the other half.
    """
    now = now or datetime.now(timezone.utc)
    if source.source == "none":
        return None
    if source.source == "file":
        if source.path is None:
            raise DynamicConfigError("[chain.dynamic_config] source = \"file\" needs path = \"/etc/miner-agent/dynamic.toml\"")
        return merge_documents([read_file(source.path)], now)
    if session is None:
        raise DynamicConfigError("no HTTP session for the dynamic config URLs")
    docs = [await fetch_document(session, url, source.fetch_timeout_s) for url in source_urls(source)]
    return merge_documents(docs, now)
