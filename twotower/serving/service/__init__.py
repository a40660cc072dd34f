"""The HTTP retrieval service behind ``twotower-serve`` (the ``serve`` extra): FastAPI endpoints over a
``Retriever`` that can be swapped for another run, and given new items, while it serves.

- ``settings``: what the command is told, checked (no web framework needed to refuse a bad setting);
- ``state``: the served run and its swaps;
- ``schemas``, ``routes``, ``admin``: the endpoints (OpenAPI page at ``/docs``);
- ``metrics``, ``middleware``: what every request costs, and the body limit;
- ``app``: the ASGI app and the serving process.
"""
