"""``/docs`` (Swagger UI) and ``/redoc`` from assets that ship with the product.

FastAPI's own pages load their scripts from a CDN, so a self-hosted install on a closed
network had a blank ``/docs``. ``make setup`` copies the npm packages' bundles
(``swagger-ui-dist``, ``redoc``) to ``frontend/dist/api-docs/``; both services serve them
at ``/docs-assets/``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_DIR = Path(__file__).resolve().parents[2] / "frontend" / "dist" / "api-docs"
ASSETS_URL = "/docs-assets"


def install_docs(app: FastAPI, *, assets: Path = ASSETS_DIR) -> None:
    """Serve the API docs from ``assets``; build the app with ``docs_url=None`` and
    ``redoc_url=None`` so FastAPI's CDN pages are not there too."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets, check_dir=False), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    missing = HTMLResponse(
        "<h1>API docs</h1><p>The docs' assets are not built: run <code>make setup</code>. "
        f'The API description is at <a href="{openapi_url}">{openapi_url}</a>.</p>',
        status_code=503,
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        if not (assets / "swagger-ui-bundle.js").is_file():
            return missing
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        if not (assets / "redoc.standalone.js").is_file():
            return missing
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
            with_google_fonts=False,
        )
