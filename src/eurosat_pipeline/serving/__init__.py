"""``eurosat serve``: the model behind an HTTP API (FastAPI), with the request limits and guards
(body size, token, hosts, upload formats), the micro-batcher that shares engine calls between
requests, and the page to try it. It translates HTTP into calls of ``inference`` and ``maps``.
"""
