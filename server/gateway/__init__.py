"""The HTTP gateway: an HTTP/JSON front of the public gRPC API.

It holds no store and no state of its own: every request becomes calls of
the gRPC API (through `upstream.Upstream`), so every rule of that API (keys,
roles, projects, limits, validation) holds over HTTP too, and a gateway can
run and scale apart from the server (`mediajobs-gateway --server HOST:PORT
--listen HOST:PORT`) or with it (`mediajobs-server --http-listen
HOST:PORT`: a child process the server manages, `process.py`, or inline in
its event loop with `--http-gateway inline`).

Modules: `upstream` (the gRPC channel and the caller's credentials),
`errors` (gRPC status -> HTTP, errors as JSON carrying google.rpc.Status),
`routes` (a route table entry -> a request message -> one RPC -> JSON, the
protos' JSON mapping), `rest` (mediajobs' own REST API), `app` (the aiohttp
application and its listener).
"""
