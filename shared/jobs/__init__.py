"""Explanation jobs: the record of every issued job id, and the inline (single-process) job runner.

A job explains texts whose classification the API already returned. Its status goes
`queued -> running -> succeeded | failed`, or to `cancelled` from either of the first two. The API
records a job before it publishes it and afterwards only reads it; the worker that runs the job is
the only writer of its state and result (worker/tasks.py). A finished job never changes again
(the store's compare-and-set), so a late redelivery cannot complete it twice. The Celery-backed
queue lives in worker/queue.py; both keep a `JobRecord` per issued id, so an unknown id is a 404 and
never "pending forever".
"""
