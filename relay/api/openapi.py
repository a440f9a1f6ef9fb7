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
#: What the media route serves: the item's own type, as the worker named it (the built-in worker's and
#: `podstream.wrap`'s types first; another worker's types are its own, `application/octet-stream` when none).
MEDIA_TYPES: Final = (
    "video/mp4", "video/webm", "image/png", "image/webp", "image/jpeg", "image/gif", "audio/wav", "audio/mpeg",
    "audio/ogg", "application/pdf", "application/octet-stream", "*/*",
)  # fmt: skip
_STRING: Final = {"type": "string"}
_INT: Final = {"type": "integer"}
_SECONDS_OR_NULL: Final = {"type": ["number", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _record(kind: str, description: str, required: list[str], **fields: Any) -> dict[str, Any]:
    """A journal record of one kind: `seq` and `k` and the kind's own fields (docs/protocol.md)."""
    return {
        "type": "object", "description": description, "required": ["seq", "k", *required],
        "properties": {"seq": {"type": "integer", "minimum": 1}, "k": {"const": kind}, **fields},
    }  # fmt: skip


#: The journal records clients read (`ev` frames on the websocket, SSE `data:`, long-poll `events`).
RECORDS: Final = {
    "StatusRecord": _record(
        "status", "RunPod's status of the job changed", ["status"],
        status=_STRING, error={"type": "string", "description": "a FAILED job's message, one line"},
    ),
    "ProgressRecord": _record(
        "progress", "an item's progress", ["item", "step", "steps"], item=_INT, step=_INT, steps=_INT
    ),
    "ItemRecord": _record(
        "item", "an item's file is held (or, `delivery: ref`, lives at `url`)",
        ["item", "id", "mime", "size", "sha256", "url", "delivery"],
        item=_INT, id=_STRING, mime=_STRING, size=_INT, sha256={"type": "string", "pattern": "^[0-9a-f]{64}$"},
        url={"type": "string", "description": "the relay's signed media URL, or the worker's own (ref)"},
        delivery={"enum": ["stream", "upload", "ref"]},
    ),
    "ErrorRecord": _record(
        "error", "an item failed (`item`), or a problem of the whole job (`item: null`)",
        ["item", "code", "message"], item={"type": ["integer", "null"]}, code=_STRING, message=_STRING,
        id={"type": "string", "description": "the lost item's id, where known"},
    ),
    "ResultRecord": _record(
        "result", "the wrapped handler's value, files as {\"$file\": item}", ["value"], value={}
    ),
    "DoneRecord": _record(
        "done", "the job ended: always the last record", ["status", "items", "errors"],
        status={"type": "string", "description": "RunPod's final status, or LOST"}, items=_INT, errors=_INT,
    ),
}  # fmt: skip
#: Any record, told apart by its kind `k`.
RECORD: Final = {
    "oneOf": [_ref(name) for name in RECORDS],
    "discriminator": {
        "propertyName": "k",
        "mapping": {
            schema["properties"]["k"]["const"]: _ref(name)["$ref"] for name, schema in RECORDS.items()
        },
    },
}
#: `GET /v1/jobs/{id}`.
MANIFEST: Final = {
    "type": "object",
    "required": [
        "id", "status", "head", "items", "expected_items", "errors", "error_count", "finished", "finished_at",
        "expires_at", "urls", "result",
    ],
    "properties": {
        "id": _STRING, "status": {"type": "string", "description": "RunPod's status, UNKNOWN before the first"},
        "head": {"type": "integer", "description": "the last seq of the journal"},
        "items": {"type": "array", "items": {
            "type": "object", "required": ["item", "id", "mime", "size", "sha256", "url"],
            "properties": {
                "item": _INT, "id": _STRING, "mime": _STRING, "size": _INT, "sha256": _STRING,
                "url": {"type": "string", "description": "absolute; signed when it is the relay's"},
                "delivery": {"enum": ["stream", "upload", "ref"]},
            },
        }},
        "expected_items": {"type": ["integer", "null"], "description": "items the input asks for; null: unknown"},
        "errors": {"type": "array", "description": "the current run's error records", "items": {
            "type": "object", "required": ["seq", "item", "code", "message"], "properties": {
                "seq": _INT, "item": {"type": ["integer", "null"]}, "code": _STRING, "message": _STRING,
            },
        }},
        "error_count": _INT, "finished": {"type": "boolean"}, "polling": {"type": "boolean"},
        "source": {"type": ["string", "null"], "description": "submit or attach"},
        "created_at": _SECONDS_OR_NULL, "finished_at": _SECONDS_OR_NULL,
        "expires_at": {"type": ["number", "null"], "description": "unix s; null while running or kept forever"},
        "urls": {"type": "object", "required": ["ws", "events", "manifest"],
                 "properties": {"ws": _STRING, "events": _STRING, "manifest": _STRING}},
        "result": {"description": "the handler's value, each file an absolute media URL; null: none"},
    },
}  # fmt: skip
#: `GET /v1/jobs/{id}/events?format=json`.
EVENTS: Final = {
    "type": "object", "required": ["events", "head", "status", "done"],
    "properties": {
        "events": {"type": "array", "items": _ref("Record")}, "head": _INT, "status": _STRING,
        "done": {"type": "boolean", "description": "the done record is in this answer or was before `after`"},
    },
}  # fmt: skip
_SSE: Final = {
    "type": "string",
    "description": "Server-Sent Events: `id: <seq>`, `event: <k>`, `data: <a Record as JSON>` per record, "
    "`: keepalive` comments while nothing happens",
}
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


def _header(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "schema": schema or _STRING,
        "description": description,
    }


def _media() -> dict[str, Any]:
    """`GET` of an item's file. Without `--media-redirect` the relay serves the bytes itself (ETag = the
    sha256, Range, 206/416); with it, everything but a 304 is a 302 to the bucket, which then answers with
    its own ETag (its MD5), Range and 416."""
    etag = {
        "description": "\"<sha256>\" in the relay's answers (after a 302, the bucket's own: its MD5)",
        "schema": _STRING,
    }
    served = {
        "ETag": etag,
        "Accept-Ranges": {"schema": {"const": "bytes"}},
        "Cache-Control": {"schema": _STRING},
        "Content-Length": {"schema": _INT},
    }
    # The item's mime is the Content-Type; the bytes are the file's, whatever it is.
    content = {mime: {"schema": {"type": "string", "format": "binary"}} for mime in MEDIA_TYPES}
    responses = {**_responses(*_STANDARD, 410, 503), **{
        "200": {"description": "The file; Content-Type is the item's mime", "headers": served,
                "content": content},
        "206": {"description": "One range of the file (a Range of several ranges is answered whole, 200)",
                "headers": {**served, "Content-Range": {"schema": _STRING, "description": "bytes first-last/size"}},
                "content": content},
        "302": {"description": "With --media-redirect (cluster mode): every request but a 304 goes to a "
                               "presigned SigV4 URL of the object (valid MEDIA_URL_TTL_S); the bucket answers "
                               "Range, If-None-Match and 416 itself, with its own ETag",
                "headers": {"Location": {"schema": _STRING, "description": "the presigned bucket URL"}}},
        "304": {"description": "If-None-Match names the item's ETag (\"<sha256>\") or is *: answered by the "
                               "relay, with or without --media-redirect", "headers": {"ETag": etag}},
        "416": {"description": "Range not satisfiable: no range of it lies within the file",
                "headers": {"Content-Range": {"schema": _STRING, "description": "bytes */size"}},
                "content": {JSON: {"schema": _ERROR}}},
    }}  # fmt: skip
    return {
        "summary": "An item's file (Range, ETag = sha256): an API key, a token of the job, or a signed URL",
        "security": _KEY_OR_TOKEN, "parameters": [
            _JOB, _ITEM, _query("exp", {"type": "string"}, "signed URL expiry (unix s)"),
            _query("sig", {"type": "string"}, "signed URL signature"),
            _header("range", "bytes=first-last, bytes=first- or bytes=-suffix: 206 (416 when past the end)"),
            _header("if-range", "the ETag the client holds: Range applies only while it still names the file"),
            _header("if-none-match", "the ETag the client holds: 304 when it is the item's (or *)"),
        ],
        "responses": dict(sorted(responses.items())),
    }  # fmt: skip


def _head(get: dict[str, Any], summary: str | None = None) -> dict[str, Any]:
    """The `HEAD` of a `GET` operation: the same parameters, statuses and headers, no body."""
    responses = {
        status: {k: v for k, v in response.items() if k != "content"}
        for status, response in get["responses"].items()
    }
    return {**get, "summary": summary or f"{get['summary']}: its headers only", "responses": responses}


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
    media = _media()
    held = {
        "summary": "This key's staged input with that sha256", "security": _KEY,
        "parameters": [_SHA256], "responses": _responses(200, 400, 401, 403, 404, body=_STAGED),
    }  # fmt: skip
    staged = {
        "summary": "A staged input's bytes, at the signed URL a job's item carries (what the worker fetches)",
        "security": [{"signedUrl": []}],
        "parameters": [
            {"name": "owner", "in": "path", "required": True, "schema": {"type": "string"}}, _SHA256,
            _query("exp", {"type": "string"}, "signed URL expiry (unix s)"),
            _query("sig", {"type": "string"}, "signed URL signature"),
        ],
        "responses": _responses(200, 302, 401, 403, 404, media="image/*", body={"type": "string"}),
    }  # fmt: skip
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
                    "responses": _responses(200, *_STANDARD, 503, body=_ref("Manifest"))},
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
            "responses": {**_responses(*_STANDARD, 503), "200": {
                "description": "SSE (text/event-stream), or with format=json one long-poll answer",
                "content": {"text/event-stream": {"schema": _SSE}, JSON: {"schema": _ref("Events")}},
            }},
        }},
        "/v1/jobs/{job}/media/{item}": {
            "get": media, "head": _head(media, "The headers GET answers for an item's file, without the file"),
        },
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
        "/v1/inputs/{sha256}": {
            "get": held, "head": _head(held, "Whether this key holds a staged input with that sha256"),
        },
        "/v1/inputs/{owner}/{sha256}": {"get": staged, "head": _head(staged)},
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
                "Manifest": MANIFEST,
                "Events": EVENTS,
                "Record": RECORD,
                **RECORDS,
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
                },
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
