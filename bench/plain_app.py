"""The plain FastAPI floor of issue 11: one route, a pydantic model of the same body with
`extra="forbid"`, answering 202 without storing, no auth, no middleware, no metrics.

What a hand-written relay would cost at the least; `bench/ingest.py` reports the relay's
durable ingest as a ratio of it. Run as `uvicorn bench.plain_app:app`.
"""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

app = FastAPI()


class Company(BaseModel):
    model_config = ConfigDict(extra="forbid")

    company_id: str = Field(min_length=1, max_length=255)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class Accepted(BaseModel):
    id: str
    status: str


@app.post("/companies", status_code=202)
async def post_company(company: Company) -> Accepted:
    return Accepted(id=uuid.uuid4().hex, status="queued")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ok"}
