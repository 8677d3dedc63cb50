"""The HQ dashboard's pages: static HTML shells that fetch the JSON API from the browser.

Pages need no session of their own (they hold no data); every data call they make does, and the
page script sends the user to /login when one answers 401. Store back offices have no internet, so
the pages load nothing from outside the api: the Content-Security-Policy says so to the browser too.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    # Shells are tiny; always revalidate so a deploy's new scripts and pages arrive together.
    "Cache-Control": "no-cache",
}

# URL path -> HTML file under <static>/pages/.
PAGES = {
    "/login": "login.html",
    "/": "feed.html",
    "/alerts/{alert_id}": "alert.html",
    "/incidents": "incidents.html",
    "/incidents/{incident_id}": "incident.html",
    "/returns": "returns.html",
    "/stats": "stats.html",
    "/stores": "stores.html",
    "/admin/audit": "audit.html",
}


def pages_router(static_dir: Path | None = None) -> APIRouter:
    """GET routes for the dashboard pages; the app mounts the static folder itself at /static."""
    pages_dir = (static_dir or STATIC_DIR) / "pages"
    missing = [name for name in PAGES.values() if not (pages_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"dashboard pages missing from {pages_dir}: {', '.join(missing)}")
    router = APIRouter()

    def page(path: Path):
        async def serve() -> FileResponse:
            return FileResponse(path, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

        return serve

    for route, name in PAGES.items():
        router.add_api_route(route, page(pages_dir / name), methods=["GET"], include_in_schema=False, name=f"page:{name.removesuffix('.html')}")
    return router


def mount_dashboard(app: FastAPI) -> None:
    """The pages, their static files at /static, and the pages' headers on those files too (so a
    page file fetched from /static/pages/ is no way around the policy)."""
    app.include_router(pages_router())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.middleware("http")
    async def static_headers(request: Request, call_next):
        response = await call_next(request)
        if request.url.path.startswith("/static/"):
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
        return response
