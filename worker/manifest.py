"""The manifest of one run of a job, kept in one place for the built-in handler and `podstream.wrap`.

Each item's manifest entry is read from the envelope that delivered it (its first `part`, its `ref`) or
failed it (its `error`), so the manifest cannot disagree with what was streamed. `envelopes()` then gives
the manifest pages, ordered by item, which are always the last envelopes of a run (podstream.wire).
"""

from __future__ import annotations

from typing import Any

from podstream import wire


class Manifest:
    """What one run streamed, item by item. `record` every `part`, `ref` and `error` envelope as it is
    made (other envelopes are ignored, and so are parts after an item's first); `envelopes()` once, at
    the end."""

    def __init__(self, envs: wire.Envelopes) -> None:
        self.envs = envs
        self._items: list[wire.ManifestItem] = []

    @property
    def items(self) -> list[wire.ManifestItem]:
        """The entries so far, ordered by item."""
        return sorted(self._items, key=lambda m: m.item)

    def record(self, envelope: dict[str, Any], *, seed: int | None = None) -> None:
        """Note the item `envelope` delivers or fails; `seed` is the one its file was generated with."""
        kind = envelope.get("type")
        if kind == wire.ERROR:
            self._items.append(wire.ManifestItem(envelope["item"], envelope["id"], "error"))
        elif kind == wire.REF:
            self._items.append(
                wire.ManifestItem(
                    envelope["item"], envelope["id"], "ref", envelope["mime"], envelope["size"],
                    envelope["sha256"], 0, envelope["url"], seed,
                )
            )  # fmt: skip
        elif kind == wire.PART and envelope["part"] == 0:
            self._items.append(
                wire.ManifestItem(
                    envelope["item"], envelope["id"], "ok", envelope["mime"], envelope["size"],
                    envelope["sha256"], envelope["parts"], seed=seed,
                )
            )  # fmt: skip

    def envelopes(self) -> list[dict[str, Any]]:
        """The manifest pages of everything recorded, numbered after the envelopes made before them."""
        return self.envs.manifest(self.items)
