"""The property catalogue (issue 12): what types each property was sent with, by which source."""

from __future__ import annotations

from app.store.part import StorePart


class PropertyCatalogue(StorePart):
    """Per property: the types seen with counts, first and last seen, the sources."""
