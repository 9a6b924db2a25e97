"""PATCH bodies: RFC 6902 JSON patch (atomic) and RFC 7386 merge patch.

Strategic merge patch is applied as a merge patch: lists are replaced rather than merged by key,
and ``$patch``/``$setElementOrder`` directives are not understood. Server-side apply is not supported
(415), which is what a server without it would answer.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from .errors import ApiError, bad_request, unsupported_media_type
from .schema import copy_json

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_patch_type(content_type: str, *, custom: bool) -> str:
    media = content_type.split(";")[0].strip().lower()
    if media == APPLY_PATCH:
        raise unsupported_media_type(media)
    if media == STRATEGIC_PATCH and custom:
        # The real server has no strategic-merge metadata for custom resources.
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}",
        )
    if media not in (JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH):
        raise unsupported_media_type(media)
    return media


def apply_patch(current: dict[str, Any], content_type: str, body: bytes, *, custom: bool) -> dict[str, Any]:
    """Apply a PATCH body to a copy of ``current``; the stored object is never touched."""
    media = check_patch_type(content_type, custom=custom)
    try:
        patch = json.loads(body or b"null")
    except ValueError as exc:
        raise bad_request(f"error decoding patch: {exc}") from exc
    if media == JSON_PATCH:
        if not isinstance(patch, list):
            raise bad_request("json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp")
        try:
            result = jsonpatch.JsonPatch(patch).apply(copy_json(current), in_place=True)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise ApiError(
                422,
                f"the server rejected our request due to an error in our request: {exc}",
                reason="Invalid",
            ) from exc
        except (
            jsonpatch.JsonPatchException,
            jsonpatch.JsonPointerException,
            KeyError,
            IndexError,
            TypeError,
        ) as exc:
            raise ApiError(
                422,
                f"the server rejected our request due to an error in our request: {exc}",
                reason="Invalid",
            ) from exc
        if not isinstance(result, dict):
            raise ApiError(
                422,
                "the server rejected our request: the patched document is not an object",
                reason="Invalid",
            )
        return result
    if not isinstance(patch, dict):
        raise bad_request("error decoding patch: the patch is not a JSON object")
    merged = merge_patch(current, patch)
    assert isinstance(merged, dict)
    return merged
