"""Who is asking: principals and the credentials that name them.

`principals` turns a bearer token into a Principal (the admin token, named tokens,
OIDC JWTs) and decides what a principal may see; `oidc` verifies JWTs against the IdP's
JWKS without blocking the event loop; `tickets` issues and checks the short-lived stream
tickets a browser's EventSource presents instead of a header. Nothing here knows HTTP:
the auth middleware (http/auth.py) calls in.
"""
