"""Rounds of debits through the redis-py client: on a cluster, or while the Meter's own
connection (`metering.pipe`) is being made.

`ClientRounds.send` runs a round's ``debit_pv`` calls as one call or one non-transactional
pipeline (on a cluster split across the masters by the client), error replies in place;
`ClientRounds.retry_noscript` reloads the script after NOSCRIPT answers (a SCRIPT FLUSH, a
failover) and sends those calls again.
"""

from __future__ import annotations

from typing import Any, Final

from redis import exceptions as redis_errors

from metering import scripts
from metering.keys import enterprise_keys
from metering.metrics import REDIS_ERRORS
from metering.scripts import RedisClient

Calls = list[tuple[str, int]]  # (enterprise, n) per script call, in order
# A flush racing the reload again is retried; past this many, those waiters get an error.
_NOSCRIPT_ATTEMPTS: Final = 5


Sent = tuple[list[Any], bool]  # the calls' replies; whether WAIT saw the replicas wanted


def waited(reply: Any, wanted: int) -> bool:
    """Whether a round's ``WAIT`` saw ``wanted`` replicas; a short one is counted."""
    if isinstance(reply, int) and reply >= wanted:
        return True
    REDIS_ERRORS.labels("wait_short").inc()
    return False


class ClientRounds:
    """``wait``: (replicas, timeout ms) for a ``WAIT`` after each round, or None."""

    def __init__(self, client: RedisClient, wait: tuple[int, int] | None = None) -> None:
        self._client = client
        self._wait = wait

    async def retry_noscript(self, calls: Calls, sent: Sent) -> Sent:
        """Replies with every NOSCRIPT answer replaced by that call's run after a reload."""
        replies, durable = sent
        for _ in range(_NOSCRIPT_ATTEMPTS):
            missing = [
                i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)
            ]
            if not missing:
                break
            # The script cache was flushed (SCRIPT FLUSH, failover): those calls did not
            # run.  Load the script once (on every master of a cluster) and re-send them
            # together; the grants still go to the earliest waiters (see _resolve).
            REDIS_ERRORS.labels("noscript").inc()
            try:
                await self._client.script_load(scripts.DEBIT_PV.source)
                again, again_durable = await self.send([calls[i] for i in missing])
            except Exception:  # those calls stay NOSCRIPT failures; the others stand
                break
            durable = durable and again_durable
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies, durable

    async def send(self, calls: Calls) -> Sent:
        """Every call's reply, an error reply in place as an exception; and whether the
        round's ``WAIT`` (if any) saw its replicas."""
        if len(calls) == 1 and self._wait is None:
            # One call (one enterprise, the common case behind one site) skips the cost
            # of a Pipeline object; its error comes back in place, as a pipeline's would.
            enterprise_id, n = calls[0]
            try:
                reply = await self._client.execute_command(
                    "EVALSHA", scripts.DEBIT_PV.sha, 4, *enterprise_keys(enterprise_id), n
                )
            except redis_errors.ResponseError as exc:
                return [exc], True
            return [reply], True
        pipe = self._client.pipeline(transaction=False)
        for enterprise_id, n in calls:
            pipe.execute_command(
                "EVALSHA", scripts.DEBIT_PV.sha, 4, *enterprise_keys(enterprise_id), n
            )
        if self._wait is not None:
            pipe.execute_command("WAIT", *self._wait)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        if self._wait is None:
            return replies, True
        return replies, waited(replies.pop(), self._wait[0])
