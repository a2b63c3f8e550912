"""The status page at `GET /`: a page, a script and a style sheet shipped inside the package.

The files hold no data: the script reads the JSON API (`/api/v1/status`, `/devices`,
`/dead-letters`, `/rejects`) like any other client, so those answers keep the token rule
(`[metrics] token_file`); the page asks for the token when the API answers 401. Nothing is
fetched from outside the gateway at run time and nothing is built: the files are served as
they are in `gateway/api/static/`.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

# The only files served, with their types; a name outside this table is a 404.
FILES = {
    "index.html": "text/html",
    "status.js": "text/javascript",
    "status.css": "text/css",
}
# No data inside, but a page matching the running version: revalidate on each load.
CACHE_CONTROL = "no-cache"
# Paths the bearer token does not guard: the page and its two files, which hold no data.
PUBLIC_PATHS = frozenset({"/", "/static/status.js", "/static/status.css"})


def routes() -> list[web.RouteDef]:
    """`/` and `/static/{name}`."""
    return [web.get("/", _index), web.get("/static/{name}", _static)]


def read(name: str) -> bytes:
    """One shipped file."""
    return resources.files("gateway.api").joinpath("static", name).read_bytes()


async def _index(_request: web.Request) -> web.Response:
    return _file("index.html")


async def _static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES or name == "index.html":
        raise web.HTTPNotFound
    return _file(name)


def _file(name: str) -> web.Response:
    return web.Response(
        body=read(name),
        content_type=FILES[name],
        charset="utf-8",
        headers={"Cache-Control": CACHE_CONTROL, "X-Content-Type-Options": "nosniff"},
    )
