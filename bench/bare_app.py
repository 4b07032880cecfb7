"""The HTTP benchmark's ceiling: FastAPI with the services' server settings (uvicorn, uvloop,
httptools, one worker, orjson responses, no access log) answering a constant JSON document.

    .venv/bin/python bench/bare_app.py PORT
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI, Request

from shared.web import ORJSONResponse

BODY = {"accepted": True, "version": 0}

app = FastAPI(default_response_class=ORJSONResponse)


@app.get("/bare")
async def bare_get() -> dict[str, object]:
    return BODY


@app.post("/bare")
async def bare_post(request: Request) -> dict[str, object]:
    await request.body()
    return BODY


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )
