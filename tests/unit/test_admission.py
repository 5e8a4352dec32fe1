"""Admission control: slots, a FIFO queue, its bound and its timeout, and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.admission import Admission


async def test_slots_are_taken_without_waiting_until_none_is_free():
    admission = Admission(2, 10, 1.0)
    assert admission.try_enter()
    assert await admission.enter()
    assert not admission.try_enter()
    assert admission.inflight == 2


async def test_a_freed_slot_goes_to_the_longest_waiting_request():
    admission = Admission(1, 10, 5.0)
    assert admission.try_enter()
    order: list[int] = []

    async def wait(n: int) -> None:
        assert await admission.enter()
        order.append(n)

    waiting = [asyncio.create_task(wait(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert admission.queued == 3
    assert not admission.try_enter()  # nobody jumps the queue
    for _ in range(3):
        admission.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*waiting)
    assert order == [0, 1, 2]
    assert (admission.inflight, admission.queued) == (1, 0)
    admission.leave()
    assert admission.inflight == 0


async def test_a_full_queue_refuses_at_once():
    admission = Admission(1, 2, 5.0)
    assert admission.try_enter()
    waiting = [asyncio.create_task(admission.enter()) for _ in range(2)]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await admission.enter()
    assert loop.time() - started < 0.05
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    assert admission.queued == 0


async def test_a_wait_past_the_timeout_is_refused_and_frees_its_place():
    admission = Admission(1, 1, 0.05)
    assert admission.try_enter()
    assert not await admission.enter()
    assert admission.queued == 0
    assert not await admission.enter()  # the place it held is free again
    admission.leave()
    assert admission.inflight == 0
    assert admission.try_enter()


async def test_a_cancelled_waiter_loses_nothing_and_leaks_no_slot():
    admission = Admission(1, 5, 5.0)
    assert admission.try_enter()
    gone = asyncio.create_task(admission.enter())
    stays = asyncio.create_task(admission.enter())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert admission.queued == 1
    admission.leave()  # skips the cancelled waiter
    assert await stays
    admission.leave()
    assert (admission.inflight, admission.queued) == (0, 0)


async def test_a_slot_handed_over_as_its_waiter_is_cancelled_goes_back():
    admission = Admission(1, 5, 5.0)
    assert admission.try_enter()
    waiter = asyncio.create_task(admission.enter())
    await asyncio.sleep(0)
    admission.leave()  # hands the slot over ...
    waiter.cancel()  # ... to a request that goes away before it runs
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert (admission.inflight, admission.queued) == (0, 0)
    assert admission.try_enter()


async def test_expired_waiters_do_not_pile_up_while_no_slot_frees():
    admission = Admission(1, 10, 0.001)
    assert admission.try_enter()
    for _ in range(500):
        assert not await admission.enter()
    assert admission.queued == 0
    assert len(admission._waiters) <= 64 + 1
