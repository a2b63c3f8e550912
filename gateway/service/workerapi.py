"""The read API of a gateway with workers: the parent asks every worker and merges the answers.

A shared subscription spreads a device over the workers, so each holds part of its backlog and
possibly the newest reading of one of its series. Merged: backlogs add up, the newest reading of
each series wins, and the status adds the workers' figures (the worst lag, sink and admission
state). A miss is read from the database by each worker, which each keeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.api import apispec
from gateway.api.core import pages
from gateway.api.readapi import BUSY_RETRY_AFTER_S, DEFAULT_LIMIT, DEFAULT_TOP
from gateway.buffer import view as buffer_view
from gateway.observe import diskwear

# (HTTP status, JSON body) of each worker's answer to one request.
Answers = list[tuple[int, dict[str, Any]]]
Ask = Callable[[str], Awaitable[Answers]]


def routes(ask: Ask, path: str) -> list[web.RouteDef]:
    """The API's routes for the parent; `ask(path_qs)` gets every running worker's answer."""

    async def openapi(_request: web.Request) -> web.Response:
        return web.json_response(apispec.DOCUMENT)

    async def devices(request: web.Request) -> web.Response:
        answers = await ask(request.path_qs)
        return _json(*merge_devices(answers, _limit(request, pages.DEFAULT_PAGE)))

    async def latest(request: web.Request) -> web.Response:
        answer = _json(*merge_latest(await ask(request.path_qs)))
        if answer.status == 503:  # noqa: PLR2004 - a worker's database reads were all taken
            answer.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
        return answer

    async def status_page(request: web.Request) -> web.Response:
        answers = await ask(request.path_qs)
        try:
            top = int(request.query.get("top", DEFAULT_TOP))
        except ValueError:
            top = DEFAULT_TOP  # the workers refused it, and their 400 is the answer
        return _json(*merge_status(answers, path, top))

    async def dead_letters(request: web.Request) -> web.Response:
        return _json(
            *merge_newest(await ask(request.path_qs), "dead_letters", "id", _limit(request))
        )

    async def rejects(request: web.Request) -> web.Response:
        return _json(*merge_newest(await ask(request.path_qs), "rejects", "ts_ns", _limit(request)))

    return [
        web.get("/api/v1/openapi.json", openapi),
        web.get("/api/v1/devices", devices),
        web.get("/api/v1/devices/{device}/latest", latest),
        web.get("/api/v1/status", status_page),
        web.get("/api/v1/dead-letters", dead_letters),
        web.get("/api/v1/rejects", rejects),
    ]


def _limit(request: web.Request, default: int = DEFAULT_LIMIT) -> int:
    """The list length asked for; a bad one the workers refused, and their 400 is the answer."""
    try:
        return int(request.query.get("limit", default))
    except ValueError:
        return default


def merge_newest(answers: Answers, key: str, order: str, limit: int) -> tuple[int, dict[str, Any]]:
    """One list of `key` from every worker's, newest first by `order`, `limit` long.

    A dead letter's id is its worker's own: ids of two workers may be equal.
    """
    failure = _failure(answers)
    if failure is not None:
        return failure
    merged: list[dict[str, Any]] = []
    count = 0
    for _, body in answers:
        merged += body.get(key, [])
        count += body.get("count", 0)
    merged.sort(key=lambda item: item[order], reverse=True)
    body = {key: merged[:limit]}
    return 200, ({"count": count, **body} if key == "dead_letters" else body)


def _json(code: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=code)


def _failure(answers: Answers) -> tuple[int, dict[str, Any]] | None:
    """The first refusal of the request itself (4xx), or 503 when no worker answered."""
    for code, body in answers:
        if 400 <= code < 500 and code != 404:  # noqa: PLR2004
            return code, body
    if not answers:
        return 503, {"error": "no worker is answering"}
    return None


def merge_devices(answers: Answers, limit: int) -> tuple[int, dict[str, Any]]:
    """One page of devices: buffered counts added, the oldest age and the last seen time kept."""
    failure = _failure(answers)
    if failure is not None:
        return failure
    return 200, pages.merge_pages([body for _, body in answers], limit)


def merge_latest(answers: Answers) -> tuple[int, dict[str, Any]]:
    """Each series' newest reading among the workers' answers; 404 when none has one."""
    found = [body for code, body in answers if code == 200]  # noqa: PLR2004
    if not found:
        failure = _failure(answers)
        if failure is not None:
            return failure
        return next(((c, b) for c, b in answers if c != 404), answers[0])  # noqa: PLR2004
    newest: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] = {}
    for body in found:
        for m in body["measurements"]:
            key = (m["measurement"], tuple(sorted(m["tags"].items())))
            if key not in newest or m["time_ns"] > newest[key]["time_ns"]:
                newest[key] = m
    sources = {body["source"] for body in found}
    return 200, {
        "device": found[0]["device"],
        "source": "cache" if "cache" in sources else "database",
        "measurements": [newest[key] for key in sorted(newest)],
    }


def merge_status(answers: Answers, path: str, top: int) -> tuple[int, dict[str, Any]]:
    """The buffers' figures added (gateway/buffer/view.py `combine`), the runtime state merged."""
    failure = _failure(answers)
    if failure is not None:
        return failure
    views = [body for code, body in answers if code == 200]  # noqa: PLR2004
    if not views:
        return answers[0]
    view = buffer_view.combine(
        path, [{k: v for k, v in w.items() if k != "runtime"} for w in views]
    )
    runtimes = [v["runtime"] for v in views]
    readings: dict[str, int] = {}
    for runtime in runtimes:
        for outcome, count in runtime["readings"].items():
            readings[outcome] = readings.get(outcome, 0) + count
    failing = max(r["sink"]["failed_writes_in_a_row"] for r in runtimes)
    admission = dict(runtimes[0]["admission"])
    admission["paused"] = any(r["admission"]["paused"] for r in runtimes)
    view["runtime"] = {
        "version": runtimes[0].get("version", ""),
        "readings": readings,
        "lag_s": max(r["lag_s"] for r in runtimes),
        "live_lag_s": max(r.get("live_lag_s", 0.0) for r in runtimes),
        "backlog_lag_s": max(r.get("backlog_lag_s", 0.0) for r in runtimes),
        "batch_size": max(r["batch_size"] for r in runtimes),
        "last_write_s": max(r.get("last_write_s", 0.0) for r in runtimes),
        "sink": {"state": "failing" if failing else "ok", "failed_writes_in_a_row": failing},
        "admission": admission,
        "mqtt_connected": all(r["mqtt_connected"] for r in runtimes),
        "loop_lag_max_s": max(r.get("loop_lag_max_s", 0.0) for r in runtimes),
        "loop_lag_p99_s": max(r.get("loop_lag_p99_s", 0.0) for r in runtimes),
        "loop_lag_limit_s": runtimes[0].get("loop_lag_limit_s", 0.0),
    }
    disks = [r["disk"] for r in runtimes if "disk" in r]
    if disks and len(disks) == len(runtimes):
        view["runtime"]["disk"] = diskwear.combine(disks, readings.get("accepted", 0))
    view["devices"] = view["devices"][:top]
    return 200, view
