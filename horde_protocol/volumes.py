"""Input volumes of a job (protocol.md §8.1), discriminated by `volume_type`.

Field names, order and defaults follow compute_horde_core so that `model_dump_json()` of a parsed
volume reproduces what the validator sent. An unknown `volume_type` invalidates the whole frame.
`relative_path` is not checked here (see `horde_protocol.paths`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Volume(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InlineVolume(_Volume):
    """A base64-encoded zip archive, unpacked into `/volume/<relative_path>`."""

    volume_type: Literal["inline"] = "inline"
    contents: str = Field(repr=False)
    relative_path: str | None = None


class ZipUrlVolume(_Volume):
    """A zip archive downloaded from `contents` (the URL; the name is historical) and unpacked."""

    volume_type: Literal["zip_url"] = "zip_url"
    contents: str
    relative_path: str | None = None


class SingleFileVolume(_Volume):
    """One file downloaded from `url` into `/volume/<relative_path>`."""

    volume_type: Literal["single_file"] = "single_file"
    url: str
    relative_path: str


class HuggingfaceVolume(_Volume):
    """A Hugging Face repository snapshot; `repo_type` null means a model, `token` falls back to the
    executor's own `HF_ACCESS_TOKEN`."""

    volume_type: Literal["huggingface_volume"] = "huggingface_volume"
    repo_id: str
    repo_type: str | None = None
    revision: str | None = None
    relative_path: str | None = None
    allow_patterns: str | list[str] | None = None
    token: str | None = Field(default=None, repr=False)


SimpleVolume = Annotated[
    Union[InlineVolume, ZipUrlVolume, SingleFileVolume, HuggingfaceVolume],
    Field(discriminator="volume_type"),
]


class MultiVolume(_Volume):
    """Several volumes downloaded in order; a `multi_volume` inside another is invalid."""

    volume_type: Literal["multi_volume"] = "multi_volume"
    volumes: list[SimpleVolume]


Volume = Annotated[
    Union[InlineVolume, ZipUrlVolume, SingleFileVolume, MultiVolume, HuggingfaceVolume],
    Field(discriminator="volume_type"),
]

VOLUME_MAX_SIZE_BYTES = 2_147_483_648  # 2 GiB per download, the stock executor's default limit

__all__ = [
    "VOLUME_MAX_SIZE_BYTES",
    "HuggingfaceVolume",
    "InlineVolume",
    "MultiVolume",
    "SimpleVolume",
    "SingleFileVolume",
    "Volume",
    "ZipUrlVolume",
]
