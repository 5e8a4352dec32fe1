"""The gateway's HTTP/1.1 engine: `asyncio.Protocol` on both sides, parsed by httptools.

    visitor.py   one client connection: llhttp fed one message at a time, pipelining in
                 order, timeouts, flow control, the response written back
    framing.py   where a message's bytes end (head, Content-Length, chunked) before
                 llhttp sees them; chunk sizes checked against the body limit
    request.py   the parsed request and its checks (version, Host, framing headers)
    exchange.py  one request through admission, the policy and the origin
    relay.py     the origin's response: parsed, framed and written back
    origin.py    the keep-alive pool of origin connections and their protocol
    tunnel.py    a websocket after its 101: the two connections joined
    heads.py     request and response heads built once as bytes (hop-by-hop removed)
    responses.py the gateway's own responses (status lines, Date, local pages)
    server.py    the engine of a worker: listening socket, connections, shutdown

The engine knows no business rules: routing, classification, charging, block pages and
give-back live in `gateway.policy` and `gateway.charging` (docs/architecture.md §4).

Its modules are compiled by mypyc when pvgate is built (setup.py, `metering.build`).
"""
