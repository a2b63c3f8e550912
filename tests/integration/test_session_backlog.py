"""A session's backlog, handed over at once when the gateway connects, against real Mosquitto.

The broker keeps QoS 1 messages for a persistent session while the gateway is away (a restart,
a pause at capacity) and sends them all as soon as it is back: the test broker, like many
deployments, sets no in-flight limit. They are taken in group commits, and the loop must turn
between them: PUBACKs, writes, scrapes and /healthz wait for a turn of the loop, so a backlog
taken in one hold stalled a gateway for as long as the backlog took (seconds under pressure, with
a scrape unanswered for five).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.gatewayproc import loop_lag_max_s, publish_simulated, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

NO_DATABASE = 'url = "http://127.0.0.1:9"\napi = "v1"\ndatabase = "x"'
# Readings kept by the broker while the gateway is stopped: dozens of group commits.
BACKLOG = 60_000
DEVICES = 100
# A group commit takes tens of milliseconds; the loop may be held for about that, not for the
# backlog (the histogram's bucket bounds: 0.2 s is the one above 0.1 s).
LOOP_LAG_LIMIT_S = 0.2


def test_a_session_backlog_is_taken_in_turns_of_the_loop(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, run_id: str
) -> None:
    """60,000 messages kept for the session: every one accepted, the loop never held 0.2 s."""
    gw = gateway(NO_DATABASE)
    assert gw.stop() == 0
    publish_simulated(mosquitto.port, run_id, BACKLOG, DEVICES)
    gw.start()
    wait_for(lambda: gw.readings("accepted") == BACKLOG, 120, "the backlog taken")
    lag_s = loop_lag_max_s(gw)
    assert lag_s <= LOOP_LAG_LIMIT_S, f"the loop was held for up to {lag_s} s"
