"""The page at `/`: a small playground (prompt, negative prompt, size, steps, sampler, seed, model;
live progress and previews; the image with its parameters). One static file, no build step; it
calls the A1111 routes from the browser, so it sits behind the same credentials as they do."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = "playground.html"


def add_playground(app: FastAPI) -> None:
    page = resources.files("sdrt.serve").joinpath(PAGE).read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)
