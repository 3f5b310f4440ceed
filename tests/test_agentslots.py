"""AgentSlots on their own: the cap on CLI processes, LRU hibernation, waiting in line."""

from __future__ import annotations

import asyncio

import pytest

from agent_webkitd.agents.slots import AgentSlots
from agent_webkitd.errors import ApiError


class Holder:
    """A session as the slots see it: idle or busy, and asked to hibernate."""

    def __init__(self, last_used: float, idle: bool = True, owner: str = "token:default") -> None:
        self.last_used = last_used
        self.owner = owner
        self.idle = idle
        self.asked = False

    def can_hibernate(self) -> bool:
        return self.idle and not self.asked

    def stopping(self) -> bool:
        return self.asked

    def request_hibernation(self) -> bool:
        self.asked = True
        return True


async def test_a_full_house_hibernates_the_least_recently_used_idle_holder() -> None:
    slots = AgentSlots(limit=2, max_concurrent_starts=1)
    old, new, busy = Holder(1.0), Holder(2.0), Holder(0.5, idle=False)
    await slots.acquire(old, wait=False)
    await slots.acquire(busy, wait=False)
    newcomer = asyncio.create_task(slots.acquire(new, wait=False))
    await asyncio.sleep(0)
    assert old.asked and not busy.asked and not newcomer.done()
    slots.release(old)  # its CLI has exited: the slot passes on
    await asyncio.wait_for(newcomer, 1)
    assert slots.live == 2


async def test_with_every_holder_busy_a_create_is_refused_and_a_wake_waits_its_turn() -> None:
    slots = AgentSlots(limit=1, max_concurrent_starts=1)
    busy = Holder(1.0, idle=False)
    await slots.acquire(busy, wait=False)
    with pytest.raises(ApiError) as refused:
        await slots.acquire(Holder(2.0), wait=False)
    assert (refused.value.status, refused.value.code) == (503, "agents_busy")
    first, second = Holder(3.0), Holder(4.0)
    waits = [asyncio.create_task(slots.acquire(h, wait=True)) for h in (first, second)]
    await asyncio.sleep(0)
    assert slots.waiting == 2
    busy.idle = True
    slots.offer()  # the busy one went idle: it makes room for the first in line
    assert busy.asked
    slots.release(busy)
    await asyncio.wait_for(waits[0], 1)
    assert not waits[1].done() and slots.live == 1


async def test_a_waiter_that_gives_up_leaves_no_slot_taken() -> None:
    slots = AgentSlots(limit=1, max_concurrent_starts=1)
    holder = Holder(1.0, idle=False)
    await slots.acquire(holder, wait=False)
    waiter = asyncio.create_task(slots.acquire(Holder(2.0), wait=True))
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    slots.release(holder)
    assert (slots.live, slots.waiting) == (0, 0)


async def test_a_principal_at_its_share_hibernates_its_own_idle_cli_never_another_s() -> None:
    slots = AgentSlots(limit=10, max_concurrent_starts=1, share=2)
    alice_old, alice_new = Holder(1.0, owner="alice"), Holder(3.0, owner="alice")
    bob_oldest = Holder(0.5, owner="bob")
    for holder in (bob_oldest, alice_old, alice_new):
        await slots.acquire(holder, wait=False)
    third = Holder(4.0, owner="alice")
    waits = asyncio.create_task(slots.acquire(third, wait=False))
    await asyncio.sleep(0)
    assert alice_old.asked and not alice_new.asked and not bob_oldest.asked
    assert not waits.done()
    # Bob is not held up by alice's share, nor by her waiting in line.
    bob_second = Holder(5.0, owner="bob")
    await asyncio.wait_for(slots.acquire(bob_second, wait=False), 1)
    assert slots.by_principal() == {"alice": {"live_agents": 2, "waiting_for_agent": 1},
                                    "bob": {"live_agents": 2, "waiting_for_agent": 0}}
    slots.release(bob_oldest)  # another's CLI exits: alice still waits for her own
    await asyncio.sleep(0)
    assert not waits.done()
    slots.release(alice_old)
    await asyncio.wait_for(waits, 1)
    assert slots.by_principal()["alice"] == {"live_agents": 2, "waiting_for_agent": 0}


async def test_at_its_share_with_nothing_idle_a_create_is_429_and_a_wake_waits_for_its_own() -> None:
    slots = AgentSlots(limit=10, max_concurrent_starts=1, share=1)
    busy = Holder(1.0, idle=False, owner="alice")
    await slots.acquire(busy, wait=False)
    with pytest.raises(ApiError) as refused:
        await slots.acquire(Holder(2.0, owner="alice"), wait=False)
    assert (refused.value.status, refused.value.code) == (429, "principal_at_capacity")
    wake = asyncio.create_task(slots.acquire(Holder(3.0, owner="alice"), wait=True))
    await asyncio.sleep(0)
    assert slots.free  # alice's wait holds up nobody else
    busy.idle = True
    slots.offer()  # her CLI went idle: it hibernates for her waiting wake
    assert busy.asked
    slots.release(busy)
    await asyncio.wait_for(wake, 1)
