"""`serve`: Segment's Tracking API over HTTP, in front of the durable outbox and its delivery worker.

tracking.py reads requests the way Segment's API does; app.py is the Starlette app (routes, auth,
limits, /health, /metrics); connections.py bounds what a client can hold (a deadline for each request
head, a cap on open connections); limits.py holds those limits' defaults; metrics.py renders
Prometheus text.
"""
