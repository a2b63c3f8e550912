"""The open-file limit, raised from its soft to its hard value when the service starts.

The HTTP server, the broker connection, the database client and LMDB share one process's
descriptors; a soft limit of 1,024 (the default on most systems) leaves little room under a
crowd of HTTP clients. systemd/gateway.service sets the hard limit (LimitNOFILE).
"""

from __future__ import annotations

import logging
import resource

logger = logging.getLogger(__name__)

# Linux's fs.nr_open default: the most a soft limit may be when the hard one is unlimited.
NR_OPEN = 1 << 20


def raise_soft_limit() -> int:
    """Set the soft RLIMIT_NOFILE to the hard one (where allowed); the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.info("open files: soft limit %d kept (%s)", soft, exc)
            return soft
        logger.info("open files: soft limit raised from %d to %d", soft, target)
        return target
    logger.debug("open files: soft limit %d (hard %d)", soft, hard)
    return soft
