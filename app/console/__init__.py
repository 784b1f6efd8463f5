"""The operator console at /console: server-rendered pages over the store (docs/console.md).

`router` holds every console route (sign-in in `auth`, the pages in `pages`); the app mounts it
without adding it to the OpenAPI document.
"""

from app.console import auth, pages
from app.console.web import router

__all__ = ["auth", "pages", "router"]
