"""SHAP's Partition (Owen value) algorithm for text, as a resumable generator.

This is a faithful port of `shap.explainers.PartitionExplainer.owen` (with `fixed_context=None`)
and of the token clustering of `shap.maskers.Text` (shap 0.51, MIT licence). Two things differ, and
neither changes a number:
- the recursion is a generator that *yields* the masks it needs evaluated and is *sent* their model
  outputs, so the caller decides how to run the model (several texts per forward pass, same-length
  rows without padding, on any device);
- masks become token ids directly (SHAP's `Text(tokenizer, output_type="token_ids")` masking), so no
  masked variant is decoded to a string and tokenized again.
With the same batch size and seed the values equal SHAP's; tests/test_explainer.py checks it.
Importing `shap` itself costs seconds of start-up, so the serving path does not.
"""

from __future__ import annotations

import heapq
import math
import re
from collections import deque
from collections.abc import Callable, Generator, Sequence

import numpy as np

# ---- token clustering (shap.maskers._text) ---------------------------------------------------

_OPENERS = {"(": ")"}
_CLOSERS = {")": "("}
_CONNECTORS = ("but", "and", "or")


class Token:
    __slots__ = ("balanced", "s")

    def __init__(self, value: str) -> None:
        self.s = value
        self.balanced = not (value in _OPENERS or value in _CLOSERS)


class TokenGroup:
    __slots__ = ("g", "index")

    def __init__(self, group: list[Token], index: int | None = None) -> None:
        self.g = group
        self.index = index

    def __getitem__(self, index: int) -> Token:
        return self.g[index]

    def __add__(self, other: TokenGroup) -> TokenGroup:
        return TokenGroup(self.g + other.g)

    def __len__(self) -> int:
        return len(self.g)


def merge_score(group1: TokenGroup, group2: TokenGroup, special_tokens: Sequence[str]) -> float:
    """How much two neighbouring token groups belong together (SHAP's heuristic, unchanged)."""
    score = 0.0
    if special_tokens and group1[-1].s in special_tokens and group2[0].s in special_tokens:
        score -= math.inf
    if group2[0].s.startswith("##"):
        score += 20
    if group2[0].s == "'" and (len(group2) == 1 or (len(group2) == 2 and group2[1].s in ["t", "s"])):
        score += 15
    if group1[-1].s == "'" and group2[0].s in ["t", "s"]:
        score += 15
    start_ctrl = group1[0].s.startswith("[") and group1[0].s.endswith("]")
    end_ctrl = group2[-1].s.startswith("[") and group2[-1].s.endswith("]")
    if (start_ctrl and not end_ctrl) or (end_ctrl and not start_ctrl):
        score -= 1000
    if group2[0].s in _OPENERS and not group2[0].balanced:
        score -= 100
    if group1[-1].s in _CLOSERS and not group1[-1].balanced:
        score -= 100
    if group1[0].s in _OPENERS and group2[-1] not in _CLOSERS:
        score -= 2
    if group1[-1].s in _CONNECTORS or group2[0].s in _CONNECTORS:
        score -= 2
    if group1[-1].s == ",":
        score -= 10
    if group2[0].s == ",":
        score -= 10 if len(group2) > 1 else 1
    if group1[-1].s in [".", "?", "!"]:
        score -= 20
    if group2[0].s in [".", "?", "!"]:
        score -= 20 if len(group2) > 1 else 1
    score -= len(group1) + len(group2)
    return score


def _partition_tree(decoded_tokens: list[str], special_tokens: Sequence[str]) -> np.ndarray:
    groups = [TokenGroup([Token(t)], i) for i, t in enumerate(decoded_tokens)]
    m = len(decoded_tokens)
    new_index = m
    clustm = np.zeros((m - 1, 4))
    for _ in range(len(groups) - 1):
        scores = [merge_score(groups[i], groups[i + 1], special_tokens) for i in range(len(groups) - 1)]
        ind = int(np.argmax(scores))
        lind = groups[ind].index
        rind = groups[ind + 1].index
        assert lind is not None and rind is not None
        clustm[new_index - m, 0] = lind
        clustm[new_index - m, 1] = rind
        clustm[new_index - m, 2] = -scores[ind]
        clustm[new_index - m, 3] = (clustm[lind - m, 3] if lind >= m else 1) + (
            clustm[rind - m, 3] if rind >= m else 1
        )
        groups[ind] = groups[ind] + groups[ind + 1]
        groups[ind].index = new_index
        if groups[ind][0].s in _OPENERS and groups[ind + 1][-1].s == _OPENERS[groups[ind][0].s]:
            groups[ind][0].balanced = True
            groups[ind + 1][-1].balanced = True
        groups.pop(ind + 1)
        new_index += 1
    clustm[:, 2] = clustm[:, 2] + 10
    return clustm


_SPACE_END = re.compile(r"^.*\W$")
_LETTER_START = re.compile(r"^[A-Za-z]")


def text_clustering(segments: Sequence[str], sep_token: str | None) -> np.ndarray:
    """SHAP's hierarchical clustering of a text's tokens (`shap.maskers.Text.clustering`)."""
    tokens: list[str] = []
    for i, v in enumerate(segments):
        if (
            i > 0
            and _SPACE_END.match(segments[i - 1]) is None
            and _LETTER_START.match(v) is not None
            and tokens[i - 1] != ""
        ):
            tokens.append("##" + v.strip())
        else:
            tokens.append(v.strip())
    pt = _partition_tree(tokens, [sep_token] if sep_token is not None else [])
    pt[:, 2] = pt[:, 3]
    pt[:, 2] /= pt[:, 2].max()
    return pt


def mask_matrix(clustering: np.ndarray) -> np.ndarray:
    """Row i holds the leaves under node i (dense version of `shap.utils.make_masks`)."""
    m = clustering.shape[0] + 1
    masks = np.zeros((2 * m - 1, m), dtype=bool)
    masks[np.arange(m), np.arange(m)] = True
    for node in range(clustering.shape[0]):
        masks[m + node] = masks[int(clustering[node, 0])] | masks[int(clustering[node, 1])]
    return masks


def _lower_credit(values: np.ndarray, clustering: np.ndarray, m: int) -> None:
    """Push each internal node's credit down to its leaves in proportion to their size (in place)."""
    stack = [(len(values) - 1, 0.0)]
    while stack:
        i, value = stack.pop()
        if i < m:
            values[i] += value
            continue
        li, ri = int(clustering[i - m, 0]), int(clustering[i - m, 1])
        group_size = int(clustering[i - m, 3])
        lsize = int(clustering[li - m, 3]) if li >= m else 1
        rsize = int(clustering[ri - m, 3]) if ri >= m else 1
        values[i] += value
        stack.append((ri, values[i] * rsize / group_size))
        stack.append((li, values[i] * lsize / group_size))


# ---- the Owen recursion (shap.explainers._partition.PartitionExplainer.owen) -----------------

# Yields mask batches, is sent their outputs, returns (values, evaluations, stopped early).
OwenSteps = Generator[np.ndarray, np.ndarray, tuple[np.ndarray, int, bool]]


def owen_values(
    clustering: np.ndarray,
    f00: np.ndarray,
    f11: np.ndarray,
    max_evals: int,
    batch_size: int,
    rng: np.random.RandomState,
    lookahead: int = 0,
    spare: int = 0,
    stop: Callable[[], bool] | None = None,
) -> OwenSteps:
    """Yield boolean mask batches (rows x tokens), receive their outputs, return (values, evaluations,
    stopped early).

    `f00`/`f11` are the outputs with every token masked / none masked; `max_evals` counts them too,
    as in SHAP. `batch_size` is SHAP's: masks are taken from the queue while fewer than it are pending.
    `rng` breaks priority ties exactly as SHAP's `np.random.randn()` does after `np.random.seed(seed)`.

    `lookahead`: fill each yielded batch up to this many rows with masks the recursion is likely to
    need next (the next levels of the tree below the nodes in play), and remember every output by its
    mask. A mask's output does not depend on when it is computed, so the recursion and its numbers
    are SHAP's exactly; only the rows per forward pass change. On an uncut tree every internal node
    is expanded, so nothing is wasted; on a cut tree at most four batches' worth of rows are.
    Rows computed ahead stay within the `max_evals` budget, plus `spare` rows where the device runs
    them almost for free (a GPU's short rows); the waste stays bounded by four batches either way.

    `stop` (anytime values): asked before each round; True ends the walk there, as running out of
    `max_evals` does. The values are then exactly SHAP's for `max_evals` = the evaluations returned:
    SHAP's rounds before that point are these rounds (a round takes nodes while fewer than
    `batch_size` masks are pending and the budget is not reached, so a budget equal to the count
    after a round changes none of them), and the nodes left share out their differences as below.
    """
    m = clustering.shape[0] + 1
    masks = mask_matrix(clustering)
    dvalues = np.zeros((2 * m - 1, len(f00)))
    budget = max_evals - 2
    counter = 0
    heap: list[tuple[float, float, int, tuple]] = [
        (0.0, 0.0, counter, (np.zeros(m, dtype=bool), f00, f11, len(dvalues) - 1, 1.0))
    ]
    eval_count = 0
    known: dict[bytes, np.ndarray] = {}  # mask -> output, for every row run
    rows_run = 0
    stopped = False
    while heap:
        if eval_count >= budget or (stop is not None and eval_count < budget and stop()):
            stopped = eval_count < budget and any(entry[3][3] >= m for entry in heap)  # nodes unsplit
            while heap:
                _, _, _, (_, lo, hi, ind, weight) = heapq.heappop(heap)
                dvalues[ind] += (hi - lo) * weight
            break
        batch_args = []
        batch_masks: list[np.ndarray] = []
        while heap and len(batch_masks) < batch_size and eval_count + len(batch_masks) < budget:
            _, _, _, (m00, lo, hi, ind, weight) = heapq.heappop(heap)
            if ind < m:  # a leaf: its whole difference is its credit
                dvalues[ind] += (hi - lo) * weight
                continue
            lind, rind = int(clustering[ind - m, 0]), int(clustering[ind - m, 1])
            m10 = m00 | masks[lind]
            m01 = m00 | masks[rind]
            batch_args.append((m00, m10, m01, lo, hi, lind, rind, weight))
            batch_masks.append(m10)
            batch_masks.append(m01)
        if not batch_args:
            continue
        missing: dict[bytes, np.ndarray] = {}
        for mask in batch_masks:
            key = mask.tobytes()
            if key not in known:
                missing[key] = mask
        if missing:
            # Rows computed ahead but not used yet stay under four batches: on a cut tree, where
            # some never will be, that bounds the waste (measured: 0-12 % more rows, 2-3x fewer
            # passes on SST-2 sentences at max_evals 500).
            ahead = rows_run - eval_count
            room = min(
                lookahead - len(missing), 4 * lookahead - ahead, budget + spare - rows_run - len(missing)
            )
            if room > 0:
                # Most likely next: the queued nodes in priority order (the recursion pops them
                # next), then the children of this round's nodes, then further down, breadth first.
                frontier = [(entry[3][0], entry[3][3]) for entry in heapq.nsmallest(room, heap)]
                for m00, m10, m01, _, _, lind, rind, _ in batch_args:
                    frontier += [(m00, lind), (m00, rind), (m01, lind), (m10, rind)]
                missing.update(_likely_next(frontier, clustering, masks, m, room, known, missing))
            rows = list(missing.values())
            outputs = yield np.array(rows)
            rows_run += len(rows)
            for key, output in zip(missing, outputs, strict=True):
                known[key] = output
        fout = [known[mask.tobytes()] for mask in batch_masks]
        eval_count += len(batch_masks)
        for i, (m00, m10, m01, lo, hi, lind, rind, weight) in enumerate(batch_args):
            f10, f01 = fout[2 * i], fout[2 * i + 1]
            half = weight / 2
            for args in (
                (m00, lo, f10, lind, half),
                (m00, lo, f01, rind, half),
                (m01, f01, hi, lind, half),
                (m10, f10, hi, rind, half),
            ):
                counter += 1
                priority = -np.max(np.abs(args[2] - args[1])) * half
                heapq.heappush(heap, (priority, rng.randn(), counter, args))
    values = dvalues.copy()
    _lower_credit(values, clustering, m)
    return values[:m], eval_count + 2, stopped


def _likely_next(
    frontier: list[tuple[np.ndarray, int]],
    clustering: np.ndarray,
    masks: np.ndarray,
    m: int,
    room: int,
    known: dict[bytes, np.ndarray],
    chosen: dict[bytes, np.ndarray],
) -> dict[bytes, np.ndarray]:
    """Up to `room` masks that expanding the frontier's nodes (breadth first) will ask for."""
    found: dict[bytes, np.ndarray] = {}
    queue = deque(frontier)
    while queue and len(found) < room:
        m00, ind = queue.popleft()
        if ind < m:
            continue
        lind, rind = int(clustering[ind - m, 0]), int(clustering[ind - m, 1])
        m10, m01 = m00 | masks[lind], m00 | masks[rind]
        for mask in (m10, m01):
            key = mask.tobytes()
            if key not in known and key not in chosen and key not in found and len(found) < room:
                found[key] = mask
        queue.extend(((m00, lind), (m00, rind), (m01, lind), (m10, rind)))
    return found
