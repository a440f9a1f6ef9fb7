"""The job input check of `POST /v1/jobs`: the input against a JSON Schema, before anything reaches RunPod.

A typo in a task name or `steps: -3` used to reach a worker and fail there, GPU time paid, with a misleading
`missing_manifest`. Now the relay answers `400 bad_input` naming the field (`params.steps: -3 is less than
the minimum of 1`), and RunPod never sees the job.

The schema (`PODSTREAM_INPUT_SCHEMA` / `podstream relay --input-schema`):
- `builtin` (default): the built-in worker's, `podstream.jobspec.job_schema()`, imported on first use
  (pydantic only, no torch: `import relay.api.app` must not import torch);
- a path to a JSON Schema file, for a worker with its own input model (`podstream schema` prints one);
- `off`: no check (a worker whose input has no schema).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import jsonschema

log = logging.getLogger("podstream.relay.input_schema")

#: Of several problems at one place, a typo'd field ("promt") explains the others ("'prompt' is required").
RELEVANCE: Final = jsonschema.exceptions.by_relevance(strong=frozenset({"additionalProperties"}))
BUILTIN: Final = "builtin"
OFF: Final = "off"


#: Said when an input misses the built-in schema as a whole (a field at its top level): most likely, the
#: worker behind the relay takes its own input and the relay was left on the default.
OWN_INPUT_HINT: Final = (
    "this relay checks inputs against the built-in worker's schema; if your worker takes its own input "
    "(a handler wrapped with podstream.wrap, a custom model), start the relay with --input-schema off "
    "(PODSTREAM_INPUT_SCHEMA=off) or a schema file"
)


class SchemaConfigError(ValueError):
    """The configured schema cannot be used (one line)."""


def field_path(path: Iterable[str | int]) -> str:
    """`items[0].seed` for ["items", 0, "seed"]; `(the input)` for the input itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the input)"


def load(setting: str) -> dict[str, Any] | None:
    """The schema the setting names (None: no check); `SchemaConfigError` for a file that will not do."""
    if setting == OFF:
        return None
    if setting in ("", BUILTIN):
        try:
            from podstream.jobspec import job_schema  # lazily: pydantic only, no torch
        except ImportError as exc:  # a relay installed without the worker package
            log.warning("the built-in input schema is not available (%s): job inputs are not checked", exc)
            return None
        return job_schema()
    try:
        schema = json.loads(Path(setting).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SchemaConfigError(f"cannot read the input schema {setting}: {exc.strerror}") from None
    except ValueError as exc:
        raise SchemaConfigError(f"the input schema {setting} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise SchemaConfigError(f"the input schema {setting} is not a JSON Schema object")
    return schema


class InputSchema:
    """A compiled validator for the configured schema, built on first use (the built-in one imports the
    worker's models)."""

    def __init__(self, setting: str = BUILTIN) -> None:
        self.setting = setting
        self._validator: Any = None
        self._loaded = False

    def _load(self) -> Any:
        if not self._loaded:
            schema = load(self.setting)
            if schema is not None:
                cls = jsonschema.validators.validator_for(schema)
                try:
                    cls.check_schema(schema)
                except jsonschema.SchemaError as exc:
                    raise SchemaConfigError(
                        f"the input schema is not a valid JSON Schema: {exc.message}"
                    ) from None
                self._validator = cls(schema)
            self._loaded = True
        return self._validator

    def check_config(self) -> None:
        """Load now (at startup), so a bad file stops the relay instead of every submit."""
        self._load()

    def problem(self, job_input: Mapping[str, Any]) -> str | None:
        """None when the input is valid, else one line naming the field (and, when the built-in schema
        refuses the input as a whole, how to run the relay for a worker with its own input)."""
        validator = self._load()
        if validator is None:
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(dict(job_input)), key=RELEVANCE)
        if error is None:
            return None
        problem = f"{field_path(error.absolute_path)}: {error.message}"
        if self.setting in ("", BUILTIN) and not error.absolute_path:
            problem += f"; {OWN_INPUT_HINT}"
        return problem
