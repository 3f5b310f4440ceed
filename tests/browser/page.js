// What the browser tests run in a real Chromium, on a page of another origin than the
// daemon's. The client is @agent-webkit/core 0.2.0 exactly as npm publishes it.
import { createAgentClient } from "/core/index.js";

// A user's access token reaches @agent-webkit/core through its fetchImpl option, so a
// page can hand it a fresh token on every call (the README's browser snippet).
function clientFor(baseUrl, token) {
  return createAgentClient({
    baseUrl,
    fetchImpl: (url, init = {}) =>
      fetch(url, { ...init, headers: { ...init.headers, authorization: `Bearer ${token}` } }),
  });
}

// Create a session, send `text`, approve every permission prompt, and return every event
// up to the turn's result.
export async function turnWithCore(baseUrl, token, text) {
  const session = await clientFor(baseUrl, token).createSession({});
  await session.send(text);
  const events = [];
  for await (const ev of session.events()) {
    events.push({ id: ev.id, event: ev.event, data: ev.data });
    if (ev.event === "permission_request") await session.approve(ev.data.correlation_id);
    if (ev.event === "result") break;
  }
  session.detach();
  return { sessionId: session.id, events };
}

// Attach to a session from `afterId` on (the client sends Last-Event-ID, so the browser
// preflights it) and return the events up to the next result.
export async function resumeWithCore(baseUrl, token, sessionId, afterId) {
  const session = clientFor(baseUrl, token).attachSession(sessionId, { resumeFromEventId: String(afterId) });
  const events = [];
  for await (const ev of session.events()) {
    events.push({ id: ev.id, event: ev.event });
    if (ev.event === "result") break;
  }
  session.detach();
  return events;
}

// Native EventSource on a stream ticket: the ticket comes from the daemon (with the
// user's token), the stream needs no header. Events land in window.seen.
export async function watchWithTicket(baseUrl, token, sessionId, eventNames) {
  const res = await fetch(`${baseUrl}/sessions/${sessionId}/stream-ticket`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}` },
  });
  if (!res.ok) throw new Error(`stream-ticket: ${res.status}`);
  const { ticket } = await res.json();
  window.seen = [];
  window.opened = 0;
  window.errors = 0;
  const source = new EventSource(`${baseUrl}/sessions/${sessionId}/stream?ticket=${ticket}`);
  source.onopen = () => window.opened++;
  source.onerror = () => window.errors++;
  for (const name of eventNames) {
    source.addEventListener(name, (e) =>
      window.seen.push({ id: Number(e.lastEventId), event: name, data: JSON.parse(e.data) }),
    );
  }
  window.source = source;
}

// A call with a token, as a page makes it: the status and the body, or what the browser
// says when it keeps the answer from the page.
export async function call(method, url, token, body) {
  try {
    const res = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: body == null ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json().catch(() => null) };
  } catch (err) {
    return { blocked: String(err) };
  }
}

// EventSource from this page: did it open, or did the browser refuse it?
export function tryEventSource(url) {
  return new Promise((resolve) => {
    const source = new EventSource(url);
    source.onopen = () => { source.close(); resolve("open"); };
    source.onerror = () => { source.close(); resolve("error"); };
  });
}

window.page = { turnWithCore, resumeWithCore, watchWithTicket, call, tryEventSource };
