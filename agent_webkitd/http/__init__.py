"""The HTTP edge: everything that knows aiohttp.

`routes` builds the app and maps each endpoint to the Supervisor, turning every failure
into `{"error": {"code", "message"}}`; `auth` is the middleware that authenticates a
request into its principal; `cors` answers browsers' preflights; `sse` is the hand-written
Server-Sent Events writer (framing, keepalive, resume with Last-Event-ID); `files` serves a
session's workspace files (list, download, upload, delete). Below this
room nothing knows HTTP.
"""
