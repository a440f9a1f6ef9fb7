"""The relay's HTTP API as an OpenAPI 3.1 document (`GET /openapi.json`).

Written by hand, next to the routes, because what matters to a client is what the handlers check and answer
(statuses, error codes, the shapes of bodies), which route metadata does not know. tests/relay/api/test_openapi.py
keeps it true: every route of the app is described here and nothing else is, and a property-based fuzz of
every operation (tests/relay/test_fuzz.py) checks each answer's status against the statuses listed here.

The websocket (`/v1/ws`) is not HTTP: docs/protocol.md describes it.
"""

from __future__ import annotations

from typing import Any, Final

#: Media types of the JSON bodies the relay takes and gives.
JSON: Final = "application/json"

_ERROR: Final = {"$ref": "#/components/schemas/Error"}
_JOB: Final = {"name": "job", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}}
_ITEM: Final = {"name": "item", "in": "path", "required": True, "schema": {"type": "string"}}
_SHA256: Final = {"name": "sha256", "in": "path", "required": True, "schema": {"type": "string"}}
#: What the relay answers about a staged input.
_STAGED: Final = {
    "type": "object", "required": ["ref", "sha256", "bytes", "mime", "url", "expires_at"],
    "properties": {
        "ref": {"type": "string", "description": "input:<sha256>, for a job's items[].image"},
        "sha256": {"type": "string"}, "bytes": {"type": "integer"}, "mime": {"type": "string"},
        "url": {"type": "string", "description": "what the worker fetches (signed; valid until expires_at)"},
        "expires_at": {"type": "number"},
    },
}  # fmt: skip
_KEY: Final[list[dict[str, list[str]]]] = [{"bearer": []}]
_KEY_OR_TOKEN: Final[list[dict[str, list[str]]]] = [{"bearer": []}, {"signedUrl": []}]

#: What each status means wherever it appears (the error body's `code` says which case).
_STATUS: Final = {
    200: "OK", 201: "Created", 206: "Partial content (Range)", 302: "Found: at the bucket (cluster mode)",
    304: "Not modified (If-None-Match)",
    400: "Bad request: bad_json, bad_input, bad_job_id, bad_item, bad_ttl, bad_jobs, bad_after, ...",
    401: "No or unknown credential (unauthorized, invalid_token, token_expired, wrong_audience)",
    403: "Not allowed (forbidden, bad_signature, url_expired, origin_not_allowed)",
    404: "Not found (not_found, runpod_not_found, no_auth, link_not_found)",
    405: "Method not allowed", 409: "Conflict (job_finished)", 410: "Gone (the file was deleted)",
    413: "Body too large (too_large, input_too_large)", 415: "Not an image (unsupported_media_type)",
    416: "Range not satisfiable", 422: "sha256_mismatch",
    429: "Rate limited (Retry-After)",
    502: "RunPod answered an error (runpod_error)",
    503: "Unavailable: no_runpod, busy, broken_job, try_again, or not ready",
    504: "RunPod did not answer in time (runpod_error)", 507: "Disk quota full (quota_exceeded)",
}  # fmt: skip


def _responses(*statuses: int, body: dict[str, Any] | None = None, media: str = JSON) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in statuses:
        if status < 300:
            content = {media: {"schema": body or {"type": "object"}}}
            out[str(status)] = {"description": _STATUS[status], "content": content}
        elif status in (302, 304):
            out[str(status)] = {"description": _STATUS[status]}
        else:
            out[str(status)] = {"description": _STATUS[status], "content": {JSON: {"schema": _ERROR}}}
    return out


def _body(schema: dict[str, Any], required: bool = False, media: str = JSON) -> dict[str, Any]:
    return {"required": required, "content": {media: {"schema": schema}}}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_TTL: Final = {"type": "number", "exclusiveMinimum": 0}
_STANDARD: Final = (400, 401, 403, 404, 405)


def paths() -> dict[str, dict[str, Any]]:
    """`paths` of the document: path -> method -> operation."""
    job_summary = {"type": "object", "required": ["id", "status"], "properties": {
        "id": {"type": "string"}, "status": {"type": "string"}, "urls": {"type": "object"},
        "token": {"type": "string"}, "token_expires_at": {"type": "number"},
    }}  # fmt: skip
    submit_body = {"type": "object", "required": ["input"], "properties": {
        "input": {"type": "object", "description": "the worker's input, checked against the relay's input schema"},
        "policy": {"type": "object", "description": "RunPod execution policy"},
        "retention_s": {"type": "number", "exclusiveMinimum": 0},
    }}  # fmt: skip
    # fmt: off
    return {
        "/healthz": {"get": {"summary": "Liveness", "security": [], "responses": _responses(200)}},
        "/readyz": {"get": {
            "summary": "Readiness: jobs reopened, disk writable and not full, file descriptors left",
            "security": [], "responses": _responses(200, 503),
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (scope metrics)", "security": _KEY,
            "responses": _responses(200, 401, 403, media="text/plain", body={"type": "string"}),
        }},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": _responses(200)}},
        "/v1/jobs": {
            "post": {
                "summary": "Submit a job to RunPod and poll it (scope jobs:write)", "security": _KEY,
                "requestBody": _body(submit_body, required=True),
                "responses": _responses(
                    201, 400, 401, 403, 413, 415, 429, 502, 503, 504, 507, body=job_summary
                ),
            },
            "get": {"summary": "List the jobs (scope jobs:read)", "security": _KEY,
                    "responses": _responses(200, 401, 403)},
        },
        "/v1/jobs/{job}": {
            "get": {"summary": "The job's manifest", "security": _KEY, "parameters": [_JOB],
                    "responses": _responses(200, *_STANDARD, 503)},
            "delete": {"summary": "Cancel the job on RunPod (scope jobs:write)", "security": _KEY,
                       "parameters": [_JOB], "responses": _responses(200, *_STANDARD, 502, 503, 504)},
        },
        "/v1/jobs/{job}/attach": {"post": {
            "summary": "Poll a job submitted elsewhere (scope jobs:write)", "security": _KEY, "parameters": [_JOB],
            "requestBody": _body({"type": "object", "properties": {"retention_s": _TTL}}),
            "responses": _responses(200, 201, *_STANDARD, 413, 502, 503, 504, body=job_summary),
        }},
        "/v1/jobs/{job}/tokens": {"post": {
            "summary": "A subscriber token for the job (and more jobs) (scope jobs:read)", "security": _KEY,
            "parameters": [_JOB],
            "requestBody": _body({"type": "object", "properties": {
                "ttl_s": _TTL, "jobs": {"type": "array", "items": {"type": "string"}}}}),
            "responses": _responses(201, *_STANDARD, 413),
        }},
        "/v1/jobs/{job}/links": {"post": {
            "summary": "A short-link code for the job (scope jobs:read)", "security": _KEY, "parameters": [_JOB],
            "requestBody": _body({"type": "object", "properties": {"ttl_s": _TTL, "uses": {"type": "integer"}}}),
            "responses": _responses(201, *_STANDARD, 413, 503),
        }},
        "/v1/links/{code}": {"post": {
            "summary": "Trade a short-link code for a read-only token of its job", "security": [],
            "parameters": [{"name": "code", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _responses(200, 404, 405),
        }},
        "/v1/jobs/{job}/events": {"get": {
            "summary": "The job's records: SSE (Last-Event-ID), or long-poll JSON with format=json",
            "security": _KEY, "parameters": [
                _JOB, _query("format", {"type": "string", "enum": ["json"]}, "json: one long-poll answer"),
                _query("after", {"type": "integer", "minimum": 0}, "records after this seq"),
                _query("wait", {"type": "integer"}, "ms to wait for a new record (format=json)"),
                {"name": "last-event-id", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": _responses(200, *_STANDARD, 503),
        }},
        "/v1/jobs/{job}/media/{item}": {"get": {
            "summary": "An item's file (Range, ETag = sha256): an API key, a token of the job, or a signed URL",
            "security": _KEY_OR_TOKEN, "parameters": [
                _JOB, _ITEM, _query("exp", {"type": "string"}, "signed URL expiry (unix s)"),
                _query("sig", {"type": "string"}, "signed URL signature"),
            ],
            "responses": _responses(200, 206, 304, *_STANDARD, 410, 416, 503,
                                    media="application/octet-stream", body={"type": "string"}),
        }},
        "/v1/inputs": {"put": {
            "summary": "Stage a job input (an image) for items[].image (scope jobs:write, or an input token)",
            "security": _KEY,
            "parameters": [{"name": "x-podstream-sha256", "in": "header", "required": False,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "requestBody": _body({"type": "string", "format": "binary"}, True, "application/octet-stream"),
            "responses": _responses(200, 201, 400, 401, 403, 413, 415, 422, 507, body=_STAGED),
        }},
        "/v1/inputs/lookup": {"post": {
            "summary": "Which of these sha256 this key holds as staged inputs (each restarts its expiry), "
                       "for a client to upload only the missing ones (scope jobs:write, or an input token)",
            "security": _KEY,
            "requestBody": _body({"type": "object", "required": ["sha256"], "properties": {"sha256": {
                "type": "array", "maxItems": 1000, "items": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            }}}, required=True),
            "responses": _responses(200, 400, 401, 403, 413, body={
                "type": "object", "required": ["held", "missing"], "properties": {
                    "held": {"type": "object", "additionalProperties": _STAGED,
                             "description": "sha256 -> the input, as GET /v1/inputs/{sha256} answers"},
                    "missing": {"type": "array", "items": {"type": "string"}},
                },
            }),
        }},
        "/v1/inputs/tokens": {"post": {
            "summary": "An input token for a browser: it may stage inputs and nothing else (scope jobs:write)",
            "security": _KEY, "requestBody": _body({"type": "object", "properties": {"ttl_s": {"type": "number"}}}),
            "responses": _responses(201, 400, 401, 403, 404, 413, body={
                "type": "object", "required": ["token", "expires_at"],
                "properties": {"token": {"type": "string"}, "expires_at": {"type": "number"}},
            }),
        }},
        "/v1/inputs/{sha256}": {"get": {
            "summary": "This key's staged input with that sha256 (HEAD: whether it is held)", "security": _KEY,
            "parameters": [_SHA256],
            "responses": _responses(200, 400, 401, 403, 404, body=_STAGED),
        }},
        "/v1/inputs/{owner}/{sha256}": {"get": {
            "summary": "A staged input's bytes, at the signed URL a job's item carries (what the worker fetches)",
            "security": [{"signedUrl": []}],
            "parameters": [
                {"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}}, _SHA256,
                _query("exp", {"type": "string"}, "signed URL expiry (unix s)"),
                _query("sig", {"type": "string"}, "signed URL signature"),
            ],
            "responses": _responses(200, 302, 401, 403, 404, media="image/*", body={"type": "string"}),
        }},
        "/v1/uploads/{job}/{item}": {"put": {
            "summary": "A worker's direct upload of one file (scope upload)", "security": _KEY,
            "parameters": [_JOB, _ITEM, {"name": "x-podstream-sha256", "in": "header", "required": True,
                                         "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}}],
            "requestBody": _body({"type": "string", "format": "binary"}, True, "application/octet-stream"),
            "responses": _responses(201, *_STANDARD, 409, 413, 422, 507),
        }},
    }
    # fmt: on


def document(version: str = "1") -> dict[str, Any]:
    """The whole OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "podstream relay",
            "version": version,
            "description": "HTTP API of the podstream relay; the websocket protocol is in docs/protocol.md.",
        },
        "paths": paths(),
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                        }
                    },
                }
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key or subscriber token",
                },
                "signedUrl": {"type": "apiKey", "in": "query", "name": "sig", "description": "with exp="},
            },
        },
        "security": _KEY,
    }
