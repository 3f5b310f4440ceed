"""A create that resumes or forks a Claude conversation: which one, whose it is, where
its transcript is, and which hibernated session here holds it (DESIGN §9, §12)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ApiError, bad_request
from ..identity.principals import Principal, may_see
from ..protocol import wire
from ..stores.base import Store
from .session import Session


@dataclass(frozen=True)
class Source:
    """The conversation a create resumes or forks, and where it was."""

    claude_session_id: str
    cwd: str | None  # the cwd its transcript is filed under
    state_dir: str | None  # the CLI state folder of the session that had it
    holder: Session | None  # the hibernated session here that holds it (a resume)


async def take_conversation(
    sessions: dict[str, Session],
    store: Store,
    request: wire.CreateSession,
    owner: Principal,
    cwd: str | None,
) -> Source:
    """The Claude conversation a create resumes or forks, where its transcript is,
    and the hibernated session that holds it (to close once the new CLI is up: a
    start that fails leaves it as it was). Two CLIs must never append to one
    transcript: resuming (not forking) a conversation that a live session holds is
    409. A fork that has not spoken yet holds nothing (it never appends to its
    source). A closed session's conversation stays its owner's until `prune`.
    Anything this principal may not see is unknown, as if it did not exist (400,
    never a fresh conversation)."""
    wanted = request.resume or ""
    holder = sessions.get(wanted) or next(
        (s for s in sessions.values() if s.claude_session_id == wanted and not s.forking),
        None,
    )
    unknown = bad_request("unknown_conversation", f"no conversation {wanted!r} that you may resume")
    if holder is None:
        known = await store.conversation(wanted)
        if known is not None and known.claude_session_id != wanted:  # by a session id:
            known = await store.conversation(known.claude_session_id) or known  # newest
        if known is None:
            if not owner.admin:  # only a session's owner knows whose a conversation is
                raise unknown
            return Source(wanted, cwd, None, None)  # an admin's own id; checked at start
        if not may_see(owner, known.owner):
            raise unknown
        claude_session_id, filed_under = known.claude_session_id, known.cwd
        state_dir, live_elsewhere = known.state_dir, known.live_elsewhere
    else:
        if not may_see(owner, holder.owner) or not holder.claude_session_id:
            raise unknown
        claude_session_id, filed_under = holder.claude_session_id, holder.spec.cwd
        state_dir, live_elsewhere = holder.spec.state_dir, False
    if request.cwd is not None and cwd != filed_under:
        raise bad_request(
            "invalid_field", "cwd: a resumed conversation keeps the cwd it was filed under"
        )
    if not request.fork and (live_elsewhere or (holder and holder.state != "hibernated")):
        where = f"session {holder.id}" if holder else "a session on another host"
        raise ApiError(
            409,
            "conversation_in_use",
            f"{where} is live in this conversation: resume it there,"
            " fork it, or wait for it to hibernate",
        )
    return Source(claude_session_id, filed_under, state_dir, None if request.fork else holder)
