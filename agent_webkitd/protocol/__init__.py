"""The agent-webkit wire protocol 1.0, in one place: what clients send (`wire`: the
inbound messages, parsed and checked), how an event is framed for Server-Sent Events
(`frames`), and the OpenAPI document both are checked against and published from
(`openapi`, data; `make openapi` writes conf/openapi.json).

The lowest room but for the top-level leaves (errors, config): sessions, stores and the
HTTP edge all speak it, and it imports none of them.
"""
