"""The one state machine of jobs and analyses: their states, the moves between them, and who makes each.

    queued ──▶ running ──▶ succeeded
       │          │ ╰────▶ failed
       │          ╰──────▶ cancelled
       ├─────────────────▶ failed, cancelled
    succeeded | failed | cancelled ──▶ removed (deleted from the store)

| move | writer |
|---|---|
| created, queued | the API (POST), together with its note of not published yet |
| queued or running → running | the worker holding the task's lease: started, started again, progress |
| running → succeeded | that worker |
| queued or running → failed | that worker; its main process when the task passed the hard time limit |
| queued or running → cancelled | the API (DELETE) |
| finished → removed | the API (DELETE) |

Nothing else writes a stored job or analysis: the sweeper only publishes and notes. Every move is a
compare-and-set in Redis (store.py) on the stored revision and on the state it leaves, so a move that
lost a race is refused instead of overwriting, and a finished job or analysis never changes again.
"""

from __future__ import annotations

from shared.kinds import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED

# target state -> the states it may be reached from
MOVES: dict[str, frozenset[str]] = {
    RUNNING: frozenset({QUEUED, RUNNING}),
    SUCCEEDED: frozenset({RUNNING}),
    FAILED: frozenset({QUEUED, RUNNING}),
    CANCELLED: frozenset({QUEUED, RUNNING}),
}
# Removal is the move out of every finished state.
REMOVABLE: frozenset[str] = FINISHED


def may_move(current: str, target: str) -> bool:
    return current in MOVES.get(target, frozenset())
