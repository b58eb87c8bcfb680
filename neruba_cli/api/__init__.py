"""`neruba serve`: the HTTP API over the same services, database and keys as the CLI.

Like the CLI, this layer parses, authenticates and renders; every rule lives in services/ and
domain/. `app.py` builds the ASGI app, `auth.py` turns a bearer key into a project and scopes,
`errors.py` gives every failure one JSON shape, `routes/` holds one module per resource.
"""
