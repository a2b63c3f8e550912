"""The status page in a real browser: Debian's headless Chromium, driven through ChromeDriver.

The page's figures must be the API's, a database outage must turn the database tile red within
a few seconds, and a gateway with a token shows nothing until the token is given. Screenshots
are kept in GATEWAY_TEST_ARTIFACTS (default: test-artifacts/ in the repository).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway import __version__
from gateway.sparkplug.core.payload import DataType, encode
from gateway.tools.simulate import device_name
from tests.gatewayproc import publish_messages, publish_simulated, wait_for
from tests.replicationpair import start_pair

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from selenium.webdriver.remote.webdriver import WebDriver

    from gateway.tools import servers
    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

ARTIFACTS = Path(
    os.environ.get("GATEWAY_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")
)
# "Within a few seconds" of the outage: the flusher's next write fails, the next poll shows it.
RED_WITHIN_S = 10
DEVICES = 5
# The browser resolves every name under this domain to 127.0.0.1.
RESOLVED_TO_LOOPBACK = "rebound.test"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium from Debian's packages, with nothing of its own reaching outside."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("chromium and chromium-driver are not installed (scripts/setup --test)")
    from selenium import webdriver  # noqa: PLC0415 - only where a browser is
    from selenium.webdriver.chrome.service import Service  # noqa: PLC0415

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1400",
        f"--user-data-dir={tmp_path / 'chromium'}",
        # Names that lead to the gateway on loopback, as a rebinding attacker's name would.
        f"--host-resolver-rules=MAP *.{RESOLVED_TO_LOOPBACK} 127.0.0.1",
    ):
        options.add_argument(flag)
    # The console, to see whether the Content-Security-Policy refused anything of the page.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    session = webdriver.Chrome(options=options, service=Service(driver))
    try:
        yield session
    finally:
        session.quit()


def shown(browser: WebDriver, element_id: str) -> tuple[str, str, str]:
    """(text, data-value, class) of an element of the page."""
    element = browser.find_element("id", element_id)
    return (
        element.text,
        element.get_attribute("data-value") or "",
        element.get_attribute("class") or "",
    )


def table(browser: WebDriver, element_id: str) -> list[list[str]]:
    """The rows of a table, read again when the page replaced them while they were read."""
    from selenium.common.exceptions import StaleElementReferenceException  # noqa: PLC0415

    for _ in range(10):
        rows = browser.find_elements("css selector", f"#{element_id} tbody tr")
        try:
            return [[cell.text for cell in row.find_elements("tag name", "td")] for row in rows]
        except StaleElementReferenceException:
            continue
    raise AssertionError(f"the table {element_id} kept changing while it was read")


def csp_violations(browser: WebDriver) -> list[str]:
    """The console's messages about the Content-Security-Policy since the last call."""
    return [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]


def keep_screenshot(browser: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 10_000, "a page, not a blank"
    return path


def test_the_page_shows_the_api_figures_and_turns_red_in_an_outage(
    browser: WebDriver,
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    gw = gateway(f'url = "{own_victoria.url}"\napi = "v2"\norg = "o"\nbucket = "b"')
    publish_simulated(mosquitto.port, run_id, 200, DEVICES)
    publish_messages(mosquitto.port, [(f"{run_id}/bad-sensor/telemetry", "{not json")])
    wait_for(lambda: gw.readings("delivered") == 200, 30, "the first readings delivered")

    browser.get(gw.base_url + "/")
    wait_for(lambda: shown(browser, "sink")[1] == "ok", 10, "the page's first figures")
    assert shown(browser, "broker")[:3:2] == ("connected", "state ok")
    code, status = gw.get("/api/v1/status?top=0")
    assert code == 200
    assert shown(browser, "buffered")[1] == str(status["readings"]) == "0"
    assert shown(browser, "dead-count")[1] == str(status["dead_letters"])
    assert shown(browser, "admission")[1] == "taking"
    loop_lag = shown(browser, "loop-lag")
    assert loop_lag[0].endswith(" ms")  # well under a second on an idle gateway
    assert loop_lag[2] == "state ok"
    assert float(loop_lag[1]) <= status["runtime"]["loop_lag_limit_s"]  # type: ignore[index]
    assert browser.find_element("id", "version").text == f"version {__version__}"
    # One database: its tile says it all, no table of one row.
    assert not browser.find_element("id", "sinks-section").is_displayed()

    def devices_shown() -> bool:
        return sorted(row[0] for row in table(browser, "devices")) == sorted(
            d["device"]
            for d in gw.get("/api/v1/devices")[1]["devices"]  # type: ignore[union-attr]
        )

    wait_for(devices_shown, 10, "the device table as the API has it")
    wait_for(
        lambda: any(
            row[1] == f"{run_id}/bad-sensor/telemetry" for row in table(browser, "rejects")
        ),
        10,
        "the refused message in the rejects table",
    )
    keep_screenshot(browser, "status-page.png")
    # The page rendered with its charts under the gateway's policy, and broke none of it.
    assert browser.find_elements("css selector", "#chart-backlog polyline")
    assert csp_violations(browser) == []

    own_victoria.stop()
    publish_simulated(mosquitto.port, run_id, 300, DEVICES)
    wait_for(lambda: "bad" in shown(browser, "sink")[2], RED_WITHIN_S, "the database tile red")
    assert shown(browser, "sink")[0].startswith("failing")
    wait_for(lambda: gw.metrics()["gateway_buffer_readings"] == 300, 30, "the backlog buffered")
    wait_for(lambda: shown(browser, "buffered")[1] == "300", 5, "the backlog on the page")
    code, status = gw.get("/api/v1/status?top=0")
    assert status["readings"] == 300
    assert status["runtime"]["sink"]["state"] == "failing"  # type: ignore[index]
    keep_screenshot(browser, "status-page-outage.png")


def test_with_two_databases_the_page_has_a_row_for_each(
    browser: WebDriver,
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    """A sink that takes the readings and one that is down: each row says so, and the down
    one holds the backlog while the other has none."""
    gw = gateway(
        f'[[sinks]]\nname = "near"\nurl = "{own_victoria.url}"\napi = "v2"\norg = "o"\n'
        'bucket = "b"\n\n[[sinks]]\nname = "far"\nurl = "http://127.0.0.1:9"\napi = "v1"\n'
        'database = "x"\n'
    )
    publish_simulated(mosquitto.port, run_id, 40, DEVICES)
    wait_for(lambda: gw.readings("accepted") == 40, 30, "the readings accepted")

    def rows() -> list[tuple[str, ...]]:
        """(sink, state without the count of failed writes, backlog, skipped) of each row."""
        return [(r[0], r[1].split(" ")[0], r[3], r[4]) for r in table(browser, "sinks")]

    browser.get(gw.base_url + "/")
    wait_for(
        lambda: rows() == [("near", "ok", "0", "0"), ("far", "failing", "40", "0")],
        RED_WITHIN_S,
        "a row per sink, the far one failing and holding the backlog",
    )
    assert browser.find_element("id", "sinks-section").is_displayed()
    near, far = browser.find_elements("css selector", "#sinks tbody tr")
    assert "state ok" in near.find_elements("tag name", "td")[1].get_attribute("class")
    assert "state bad" in far.find_elements("tag name", "td")[1].get_attribute("class")
    assert shown(browser, "sink")[2] == "state bad", "the Database tile: one of them fails"
    keep_screenshot(browser, "status-page-sinks.png")
    assert csp_violations(browser) == []


def test_with_a_standby_the_page_shows_the_pair_and_when_it_is_away(
    browser: WebDriver,
    gateway: Callable[..., GatewayProcess],
    own_victoria: servers.Server,
) -> None:
    primary, standby = start_pair(gateway, own_victoria)
    browser.get(primary.base_url + "/")

    def row() -> list[str]:
        rows = table(browser, "replication")
        return rows[0] if rows else []

    wait_for(
        lambda: row()[:4] == ["primary", "a", "wait for the standby", "b following"],
        10,
        "the pair's row",
    )
    assert browser.find_element("id", "replication-section").is_displayed()
    keep_screenshot(browser, "status-page-replication.png")
    standby.stop()
    wait_for(
        lambda: row()[2:4] == ["standby away: local only", "b offline"],
        RED_WITHIN_S,
        "the standby away on the page",
    )
    cell = browser.find_elements("css selector", "#replication tbody tr td")[2]
    assert "state bad" in (cell.get_attribute("class") or "")
    assert csp_violations(browser) == []


def test_with_a_token_the_page_asks_for_it_and_then_shows_the_figures(
    browser: WebDriver, gateway: Callable[..., GatewayProcess], tmp_path: Path
) -> None:
    token = "page-token-31f9-0c2a"
    gw = gateway(
        'url = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "x"',
        env={"GATEWAY__METRICS__TOKEN": token},
        wait_connected=False,
    )
    browser.get(gw.base_url + "/")
    wait_for(lambda: browser.find_element("id", "login").is_displayed(), 10, "the token form")
    assert shown(browser, "buffered")[0] == "-", "nothing shown without the token"
    browser.find_element("id", "token").send_keys(token)
    browser.find_element("css selector", "#login button").click()
    wait_for(lambda: shown(browser, "buffered")[1] == "0", 10, "the figures after the token")
    assert not browser.find_element("id", "login").is_displayed()
    assert token not in browser.page_source, "the token is kept out of the page"
    assert csp_violations(browser) == [], "the token form posts nowhere under form-action"


def test_the_page_lists_sparkplug_edge_nodes_and_their_state(
    browser: WebDriver, gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, run_id: str
) -> None:
    subscription = f'[[mqtt.subscriptions]]\ntopic = "spBv1.0/{run_id}/#"\nformat = "sparkplug_b"\n'
    gw = gateway('url = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "x"', subscription)
    browser.get(gw.base_url + "/")
    wait_for(lambda: shown(browser, "buffered")[1] == "0", 10, "the page's first figures")
    assert not browser.find_element("id", "sparkplug-section").is_displayed()

    now_ms = time.time_ns() // 1_000_000
    birth = encode(
        now_ms,
        [("bdSeq", None, DataType.Int64, 3, None), ("Flow", 1, DataType.Double, 1.5, None)],
        seq=0,
    )
    device = encode(
        now_ms,
        [("Speed", 2, DataType.Int32, 7, None), ("Hot", 3, DataType.Boolean, True, None)],
        seq=1,
    )
    publish_messages(
        mosquitto.port,
        [
            (f"spBv1.0/{run_id}/NBIRTH/edge1", birth),
            (f"spBv1.0/{run_id}/DBIRTH/edge1/pump", device),
        ],
    )
    expected = [[run_id, "edge1", "-", "online", "1"], [run_id, "edge1", "pump", "online", "2"]]
    wait_for(
        lambda: [row[:5] for row in table(browser, "sparkplug")] == expected,
        15,
        "the edge node and its device on the page",
    )
    keep_screenshot(browser, "status-page-sparkplug.png")
    death = encode(now_ms, [("bdSeq", None, DataType.Int64, 3, None)])
    publish_messages(mosquitto.port, [(f"spBv1.0/{run_id}/NDEATH/edge1", death)])
    wait_for(
        lambda: [row[3] for row in table(browser, "sparkplug")] == ["offline", "offline"],
        15,
        "both offline after the NDEATH",
    )


def test_the_device_list_pages_on_and_finds_a_device_by_name(
    browser: WebDriver,
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    """More devices than a page: the first page, the next one holding the rest, and a search
    by exact name showing that device alone."""
    gw = gateway(f'url = "{own_victoria.url}"\napi = "v2"\norg = "o"\nbucket = "b"')
    count = 130
    publish_simulated(mosquitto.port, run_id, count, count)
    wait_for(lambda: gw.get("/api/v1/devices")[1]["total"] == count, 30, "every device listed")
    names = sorted(d["device"] for d in gw.get("/api/v1/devices?limit=1000")[1]["devices"])  # type: ignore[union-attr]

    browser.get(gw.base_url + "/")
    wait_for(lambda: len(table(browser, "devices")) == 100, 10, "the first page of devices")
    assert [row[0] for row in table(browser, "devices")] == names[:100]
    assert browser.find_element("id", "devices-count").text == f"(100 of {count})"
    browser.find_element("id", "devices-next").click()
    wait_for(lambda: len(table(browser, "devices")) == count - 100, 10, "the next page")
    assert [row[0] for row in table(browser, "devices")] == names[100:]
    assert not browser.find_element("id", "devices-next").is_enabled()
    browser.find_element("id", "device-name").send_keys(names[42])
    browser.find_element("css selector", "#device-search button[type=submit]").click()
    wait_for(lambda: [r[0] for r in table(browser, "devices")] == [names[42]], 10, "the search")
    browser.find_element("id", "devices-first").click()
    wait_for(lambda: len(table(browser, "devices")) == 100, 10, "the first page again")


def test_a_page_whose_name_was_rebound_to_the_gateway_reads_nothing(
    browser: WebDriver,
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    run_id: str,
    own_victoria: servers.Server,
) -> None:
    """No token, loopback: a foreign name resolving to 127.0.0.1 gets 421 for the page and the
    API (what a rebinding page's script would read), and a name in allowed_hosts the page."""
    allowed = f"gateway.{RESOLVED_TO_LOOPBACK}"
    gw = gateway(
        f'url = "{own_victoria.url}"\napi = "v2"\norg = "o"\nbucket = "b"',
        metrics_extra=f'allowed_hosts = ["{allowed}"]\n',
    )
    publish_simulated(mosquitto.port, run_id, 20, DEVICES)
    wait_for(lambda: gw.readings("accepted") == 20, 30, "the readings accepted")
    port = gw.base_url.rsplit(":", 1)[1]
    foreign = f"http://attacker.{RESOLVED_TO_LOOPBACK}:{port}"
    for path in ("/", "/api/v1/devices", "/api/v1/dead-letters", "/metrics"):
        browser.get(foreign + path)
        body = browser.find_element("tag name", "body").text
        assert "does not answer to that host name" in body, (path, body)
        assert device_name(0) not in body, (path, body)
    browser.get(f"http://{allowed}:{port}/")
    wait_for(lambda: len(table(browser, "devices")) == DEVICES, 10, "the devices on the page")
    assert csp_violations(browser) == []


# The wear tiles' texts as the page's own wear() draws them from a runtime.disk, read in the same
# script so that the page's next poll cannot redraw them in between.
WEAR_TILES = """
wear(arguments[0] === null ? undefined : arguments[0]);
return ["disk-per-reading", "disk-written", "disk-per-day", "disk-life"].map(
  (id) => document.getElementById(id).textContent);
"""


def test_the_wear_tiles_show_what_is_known_and_nothing_where_proc_is_unreadable(
    browser: WebDriver, gateway: Callable[..., GatewayProcess]
) -> None:
    """Null and used-up wear figures draw without error; absent ones are '-', not 'measuring'."""
    gw = gateway('url = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "x"', wait_connected=False)
    browser.get(gw.base_url + "/")
    wait_for(
        lambda: shown(browser, "disk-written")[0].endswith("since start"), 10, "the bytes written"
    )
    nulls = {
        "written_bytes": 4096,
        "bytes_per_reading": None,
        "bytes_per_hour": None,
        "bytes_per_day": None,
        "endurance_remaining_bytes": 10**12,
        "projected_life_days": None,
    }
    used_up = {
        **nulls,
        "bytes_per_day": 0,
        "endurance_remaining_bytes": 0,
        "projected_life_days": 0,
    }
    assert browser.execute_script(WEAR_TILES, nulls) == [
        "-",
        "4.1 kB since start",
        "measuring",
        "measuring",
    ]
    assert browser.execute_script(WEAR_TILES, used_up)[3] == "0 days"
    assert shown(browser, "disk-life")[2] == "figure bad"
    assert browser.execute_script(WEAR_TILES, None) == ["-", "not readable here", "-", "-"]
    assert not [e for e in browser.get_log("browser") if e["source"] == "javascript"]
