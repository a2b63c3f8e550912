"""`gateway status` and `gateway verify-buffer`: views of the buffer from outside the service.

`status` asks the running service (`/api/v1/status`, the same figures as the read API), else
opens LMDB read-only, which works while the gateway runs (LMDB serves concurrent readers) and
while it is stopped, and can change nothing.

The request carries the metrics token, so it goes to the configured listen address only: no
proxy from the environment, no redirect followed (a redirect is an error naming where it
pointed), and with TLS the listener's own certificate is the one trusted. An answer that is
not the gateway's (another program on the port) is an error that says so, not a fallback.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from gateway.buffer.store import Buffer
from gateway.buffer.view import combine, snapshot
from gateway.errors import GatewayError
from gateway.service import workers
from gateway.service.progress import Ticker, scan_progress

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.settings import Settings

EXIT_MISMATCH = 1
HTTP_REDIRECTS, HTTP_SERVER_ERRORS = range(300, 400), range(500, 600)
HTTP_UNAUTHORIZED = 401
SERVICE_TIMEOUT_S = 2.0
ALL_DEVICES = 1 << 31
# One database is the "database ok" of the runtime line; a list starts to say more at two.
MIN_SINKS_LISTED = 2


def render(view: dict[str, Any], top: int) -> str:
    """The snapshot as a terminal table, largest backlog first."""
    summary = (
        f"buffer {view['path']}: {view['readings']:,} readings, {_size(view['bytes'])} of "
        f"{_size(view['budget_bytes'])} ({view['fill_ratio']:.1%}; file "
        f"{_size(view['file_bytes'])} of {_size(view['capacity_bytes'])} on disk), "
        f"{view['devices_with_backlog']:,} devices with a backlog, "
        f"{view['dead_letters']:,} dead letters"
    )
    lines = [summary]
    # Older views (a service of an earlier version) have no summaries.
    summaries = view.get("summaries") or {}
    if summaries:
        lines.append(_summaries_line(summaries, view.get("runtime")))
    devices = view["devices"]
    if devices:
        oldest = max(devices, key=lambda d: d["oldest_age_s"])
        lines.append(
            f"oldest buffered reading: {_age(oldest['oldest_age_s'])} old ({oldest['device']})"
        )
        extra = f" {'summaries':>10}" if summaries else ""
        lines.append(
            f"{'device':<32} {'class':<12} {'readings':>12}{extra} {'bytes':>10} {'oldest':>10}"
        )
        for d in devices[:top]:
            extra = f" {d.get('summaries', 0):>10,}" if summaries else ""
            lines.append(
                f"{d['device'][:32]:<32} {d['device_class'][:12]:<12} {d['readings']:>12,}"
                f"{extra} {_size(d['bytes']):>10} {_age(d['oldest_age_s']):>10}"
            )
        if view["devices_with_backlog"] > top:
            lines.append(f"... and {view['devices_with_backlog'] - top:,} more devices")
    return "\n".join(lines)


def _summaries_line(summaries: dict[str, int], runtime: dict[str, Any] | None) -> str:
    """The summaries buffered by step, and how many readings the service summarised."""
    line = "summaries buffered: " + " · ".join(f"{step} {n:,}" for step, n in summaries.items())
    if runtime is not None:
        summarised = runtime["readings"].get("summarised", 0)
        line += f" ({summarised:,} readings summarised since the service started)"
    return line


def status(settings: Settings, *, as_json: bool, top: int) -> str:
    """The status text (or JSON): from the running service's API, else from the buffer on disk.

    The service adds what only it knows (lag, batch size, sink and admission state); the disk
    has the same buffer figures, so the command works with the service stopped.
    """
    view = from_service(settings, top=ALL_DEVICES if as_json else top)
    if view is None:
        view = from_disk(settings)
    if as_json:
        return json.dumps(view, indent=2)
    text = render(view, top)
    runtime = view.get("runtime")
    if runtime is None:
        return f"{text}\n(service not answering on {settings.metrics.listen}: read from disk)"
    pair = runtime.get("replication")
    if pair is not None and pair["role"] == "standby":
        return f"{text}\n{replication_line(pair)}"
    sink, admission = runtime["sink"], runtime["admission"]
    live, backlog = runtime.get("live_lag_s", 0.0), runtime.get("backlog_lag_s", 0.0)
    sinks = "".join(f"\n{line}" for line in sink_lines(runtime.get("sinks") or []))
    return (
        f"{text}\nwrite-behind lag {runtime['lag_s']:.1f} s (live {live:.1f} s, backlog "
        f"{backlog:.1f} s), batch size {runtime['batch_size']}, "
        f"database {sink['state']}, intake {'paused' if admission['paused'] else 'taking readings'}"
        f" (policy {admission['policy']}), broker "
        f"{'connected' if runtime['mqtt_connected'] else 'not connected'}"
        f"\nevent loop lag in the last minute: max {_ms(runtime.get('loop_lag_max_s', 0.0))}, "
        f"p99 {_ms(runtime.get('loop_lag_p99_s', 0.0))}{sinks}"
        + (f"\n{replication_line(pair)}" if pair is not None else "")
    )


def replication_line(pair: dict[str, Any]) -> str:
    """The pair as `runtime.replication` of the status JSON says (gateway/replication)."""
    peer = pair.get("peer")
    if pair["role"] == "standby":
        primary = "no primary seen yet" if peer is None else f"primary {peer['node']}"
        if peer is not None and not peer["online"]:
            primary += f" offline, taking over in {pair.get('takeover_in_s') or 0:.1f} s"
        state = (
            "receiving a snapshot"
            if pair.get("receiving_snapshot")
            else ("following" if pair.get("following") else "catching up")
        )
        return (
            f"replication: standby {pair['node']} ({pair['mode']}), {state} {primary}; "
            f"applied through record {pair['last_record']:,} "
            f"({pair.get('applied_records', 0):,} records since start)"
        )
    if pair["role"] == "deposed":
        return (
            f"replication: {pair['node']} was taken over as the primary: it takes no readings "
            "and delivers what it holds"
        )
    if peer is None:
        standby = "no standby seen yet"
    else:
        standby = f"standby {peer['node']} " + (
            ("following" if peer.get("following") else "catching up")
            if peer["online"]
            else "offline"
        )
    meaning = {
        "sync": "acks wait for the standby",
        "degraded": "standby away: "
        + ("acks held" if pair.get("standby_away") == "hold" else "local durability only"),
        "async": "acks do not wait",
    }[pair["durability"]]
    return (
        f"replication: primary {pair['node']} ({pair['mode']}: {meaning}), {standby}; "
        f"{pair.get('shipped_records', 0):,} records shipped since start; "
        f"record {pair['last_record']:,}, confirmed {pair['confirmed_record']:,}, lag "
        f"{pair['lag_records']:,} records / {pair['lag_s']:.1f} s, {pair['held_acks']:,} "
        "commits' acks waiting"
    )


def sink_lines(sinks: list[dict[str, Any]]) -> list[str]:
    """A line per database when there are several; none for one, which the lines above cover.

    Args:
        sinks: `runtime.sinks` of the status JSON, in configured order.

    Returns:
        The lines, name first, or an empty list for fewer than two sinks.
    """
    if len(sinks) < MIN_SINKS_LISTED:
        return []
    width = max(len(s["name"]) for s in sinks)
    lines = []
    for s in sinks:
        failed = s.get("failed_writes_in_a_row", 0)
        state = "ok" if s["state"] == "ok" else f"failing ({failed} writes in a row)"
        lines.append(
            f"sink {s['name']:<{width}}  {state}, lag {s['lag_s']:.1f} s, backlog "
            f"{s['backlog_readings']:,} readings, {s.get('skipped_readings', 0):,} skipped"
        )
    return lines


def from_disk(settings: Settings) -> dict[str, Any]:
    """The buffer figures read from LMDB: every worker's environment together."""
    views = []
    for path in environments(settings):
        with Buffer(path, int(settings.buffer.capacity), readonly=True) as buffer:
            views.append(snapshot(buffer, time.time_ns(), steps_s=settings.buffer.compact_steps_s))
    return views[0] if len(views) == 1 else combine(str(settings.buffer.path), views)


class ServiceAnswerError(GatewayError):
    """Something answered on the service's address, but not as the running gateway does."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is handed back as an error: following it would send the token elsewhere."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


def from_service(settings: Settings, *, top: int) -> dict[str, Any] | None:
    """`/api/v1/status` of the running service; None when nothing answers it.

    Raises:
        ServiceAnswerError: a redirect, a refused token, or an answer that is not the gateway's.
    """
    m = settings.metrics
    if not (m.enabled and settings.api.enabled):
        return None
    host, port = m.host_port
    if host in {"0.0.0.0", "::", ""}:  # noqa: S104 - the wildcard is where it listens
        host = "127.0.0.1"
    scheme, context = "http", None
    if m.tls_cert_file:
        # Its own certificate is the one to trust; the name in it need not be this host's.
        scheme, context = "https", ssl.create_default_context(cafile=str(m.tls_cert_file))
        context.check_hostname = False
        # A certificate a CA issued is not a trust anchor to OpenSSL unless partial chains are
        # allowed: without this, the handshake failed and status silently read the disk.
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    where = f"{scheme}://{host}:{port}" if ":" not in host else f"{scheme}://[{host}]:{port}"
    request = urllib.request.Request(  # noqa: S310 - the configured server
        f"{where}/api/v1/status?top={top}",
        headers={"Authorization": f"Bearer {m.token.get_secret_value()}"} if m.token else {},
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),  # never an http_proxy from the environment
        urllib.request.HTTPSHandler(context=context),
        _NoRedirect(),
    )
    try:
        with opener.open(request, timeout=SERVICE_TIMEOUT_S) as answer:
            body = answer.read()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the answer's connection
            _refuse(where, exc)
        return None  # a 5xx: the service cannot answer now; the disk can
    except OSError:
        return None
    try:
        view = json.loads(body)
    except ValueError:
        view = None
    if not (isinstance(view, dict) and isinstance(view.get("runtime"), dict)):
        raise ServiceAnswerError(
            f"{where} answered /api/v1/status with something other than the gateway's status: "
            "is another program listening on [metrics] listen?"
        )
    return view


def _refuse(where: str, error: urllib.error.HTTPError) -> None:
    """Raise for an HTTP error answer that is not the service being unable to answer now."""
    if error.code in HTTP_SERVER_ERRORS:
        return
    if error.code in HTTP_REDIRECTS:
        location = error.headers.get("Location", "(no Location)")
        raise ServiceAnswerError(
            f"{where} answered /api/v1/status with a redirect ({error.code}) to {location!r}; "
            "gateway status follows no redirect (the token would go with it): is another "
            "program listening on [metrics] listen?"
        )
    if error.code == HTTP_UNAUTHORIZED:
        raise ServiceAnswerError(f"{where} refused the token of [metrics] token_file (HTTP 401)")
    raise ServiceAnswerError(f"{where} answered /api/v1/status with HTTP {error.code}")


def environments(settings: Settings) -> list[Path]:
    """Every LMDB environment under the buffer path (one per worker), or the path itself."""
    return [slot.path for slot in workers.existing(settings)] or [settings.buffer.path]


def verify(settings: Settings, *, repair: bool, as_json: bool = False) -> tuple[int, str]:
    """Full scan of every environment; (exit code, report text), a line a second meanwhile."""
    code, texts, results = 0, [], []
    for path in environments(settings):
        ticker = Ticker(f"verify-buffer {path}")
        with Buffer(path, int(settings.buffer.capacity), readonly=not repair) as buffer:
            scanned = scan_progress(ticker)
            report = buffer.repair(scanned) if repair else buffer.verify(scanned)
            totals = buffer.totals()
            found_now, lost = buffer.damaged()
            damaged = buffer.damaged_chunks()
        results.append(
            {
                "path": str(path),
                "consistent": report.is_consistent and not found_now,
                "repaired": repair and not report.is_consistent,
                "problems": list(report.problems),
                "damaged_chunks": damaged,
                "damaged_readings_found": sum(lost.values()),
                **asdict(totals),
            }
        )
        if damaged:
            texts.append(
                f"buffer {path}: {len(damaged)} damaged chunks set aside "
                f"({found_now} found by this scan, {sum(lost.values()):,} readings lost):"
            )
            texts += damaged
        if found_now:
            code = EXIT_MISMATCH
        if report.is_consistent:
            texts.append(
                f"buffer {path}: consistent; {totals.readings:,} readings of "
                f"{totals.devices:,} devices, {_size(totals.nbytes)}"
            )
            continue
        code = EXIT_MISMATCH
        verdict = "repaired" if repair else "run with --repair while the gateway is stopped to fix"
        texts += [f"buffer {path}: accounting mismatch ({verdict}):", *report.problems]
    return code, json.dumps(results, indent=2) if as_json else "\n".join(texts)


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":  # noqa: PLR2004
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _age(seconds: float) -> str:
    if seconds < 60:  # noqa: PLR2004
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
