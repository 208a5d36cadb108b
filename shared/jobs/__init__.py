"""Explanation jobs and dataset analyses: their stored form (job.py), their one state machine
(state.py), their Redis store (store.py), inline jobs without a broker (inline.py), analyses
(analysis.py) and running tasks' leases (lease.py).

A job explains texts whose classification the API already returned; an analysis explains a dataset in
chunks. Both move `queued -> running -> succeeded | failed`, or to `cancelled` from either of the
first two, and every move is a compare-and-set made by its one writer (state.py says which). The
API-side queue and its sweeper live in api/queue.py; every issued id is stored, so an unknown id
is a 404 and never "pending forever".
"""
