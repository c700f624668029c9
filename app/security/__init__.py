"""Who may call what: API keys with scopes, per-key rate limits, and request limits.

Keys are checked once per request at the edge (app/graphql/http.py for HTTP, the websocket
`connection_init` for subscriptions); each root field then declares the scope it needs
(app/graphql/permissions.py). The README's Security section is the operator's view of all of it.
"""
