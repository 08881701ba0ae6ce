"""Where a job's output goes (protocol.md §8.2), discriminated by `output_upload_type`.

Presigned URLs go in `url`, with `form_fields` for POST policies and `signed_headers` for signed
PUT headers. Field order follows compute_horde_core so a parsed upload re-serializes byte-exactly.
`relative_path` is not checked here (see `horde_protocol.paths`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class _Upload(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ZipAndHttpPostUpload(_Upload):
    """Zip of `/output`, multipart POST (file field `file`, filename `output.zip`) plus `form_fields`."""

    output_upload_type: Literal["zip_and_http_post"] = "zip_and_http_post"
    url: str
    form_fields: dict[str, str] | None = None


class ZipAndHttpPutUpload(_Upload):
    """Zip of `/output`, PUT as the raw body."""

    output_upload_type: Literal["zip_and_http_put"] = "zip_and_http_put"
    url: str


class SingleFilePostUpload(_Upload):
    """`/output/<relative_path>`, multipart POST (field `file`, filename = basename)."""

    output_upload_type: Literal["single_file_post"] = "single_file_post"
    url: str
    form_fields: dict[str, str] | None = None
    relative_path: str
    signed_headers: dict[str, str] | None = None


class SingleFilePutUpload(_Upload):
    """`/output/<relative_path>`, PUT as the raw body with `signed_headers`."""

    output_upload_type: Literal["single_file_put"] = "single_file_put"
    url: str
    relative_path: str
    signed_headers: dict[str, str] | None = None


SingleFileUpload = Annotated[
    Union[SingleFilePostUpload, SingleFilePutUpload],
    Field(discriminator="output_upload_type"),
]


class MultiUpload(_Upload):
    """Each file of `uploads` on its own; `system_output` = zip of `/output` minus those files."""

    output_upload_type: Literal["multi_upload"] = "multi_upload"
    uploads: list[SingleFileUpload]
    # A plain (smart) union, not a tagged one, as in compute_horde_core: an object without
    # `output_upload_type` still parses, as the POST variant.
    system_output: Union[ZipAndHttpPostUpload, ZipAndHttpPutUpload, None] = None


OutputUpload = Annotated[
    Union[SingleFilePostUpload, SingleFilePutUpload, ZipAndHttpPostUpload, ZipAndHttpPutUpload, MultiUpload],
    Field(discriminator="output_upload_type"),
]

OUTPUT_UPLOAD_MAX_SIZE_BYTES = 2_147_483_648  # 2 GiB per zip or file, the stock executor's default limit

__all__ = [
    "OUTPUT_UPLOAD_MAX_SIZE_BYTES",
    "MultiUpload",
    "OutputUpload",
    "SingleFilePostUpload",
    "SingleFilePutUpload",
    "SingleFileUpload",
    "ZipAndHttpPostUpload",
    "ZipAndHttpPutUpload",
]
