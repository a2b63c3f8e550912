"""What a SIGHUP may change: the keys that differ between two configurations, split in two.

Pure. Reloadable are the keys the running service can take without reconnecting or reopening
anything: the log settings, the flusher's tuning and the admission thresholds. Everything else
needs a restart, and the service says which keys those were.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:
    from gateway.config.settings import Settings

RELOADABLE_SECTIONS = ("log", "flush")
# The flusher's workers are started once.
FIXED_KEYS = frozenset({"flush.max_in_flight"})
RELOADABLE_KEYS = frozenset(
    {
        "buffer.policy",
        "buffer.high_watermark",
        "buffer.low_watermark",
        "buffer.device_share",
        "buffer.max_devices",
    }
)


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """Every key path whose value differs, sorted; list items are named by index."""
    before = dict(_leaves(old.model_dump(mode="json")))
    after = dict(_leaves(new.model_dump(mode="json")))
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def is_reloadable(key: str) -> bool:
    """Whether a SIGHUP applies a change of `key`."""
    if key in FIXED_KEYS:
        return False
    return key.split(".", 1)[0] in RELOADABLE_SECTIONS or key in RELOADABLE_KEYS


def effective(old: Settings, new: Settings) -> Settings:
    """The settings in force after a reload: `new` where reloadable, `old` everywhere else.

    The sinks are `old`'s (a change of them needs a restart). Where their own `[flush]` keys do
    not fit `new`'s `[flush]` (a sink's batch_floor above the new batch_initial), `[flush]`
    stays `old`'s too: `new` was only checked against its own sinks.
    """
    buffer = old.buffer.model_copy(
        update={
            key.split(".")[1]: getattr(new.buffer, key.split(".")[1]) for key in RELOADABLE_KEYS
        }
    )
    flush = new.flush.model_copy(update={"max_in_flight": old.flush.max_in_flight})
    settings = old.model_copy(update={"log": new.log, "flush": flush, "buffer": buffer})
    try:
        settings.resolved_sinks()
    except ValidationError:
        return old.model_copy(update={"log": new.log, "buffer": buffer})
    return settings


def _leaves(value: Any, prefix: str = "") -> list[tuple[str, Any]]:  # noqa: ANN401 - JSON data
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, f"{prefix}{i}.")]
    return [(prefix.rstrip("."), value)]
