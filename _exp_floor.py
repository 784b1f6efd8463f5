import os
from bench.floor_app import app
from app.api import companies
from starlette.routing import request_response
r = [x for x in companies.router.routes if getattr(x, "path", None) == "/companies"][0]
if os.environ.get("EXP_DIRECT"):
    app.router.routes.insert(4, r)
if os.environ.get("EXP_STARLETTE"):
    r.app = request_response(r.get_route_handler())
