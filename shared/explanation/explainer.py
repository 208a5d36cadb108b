"""Explain texts: SHAP Partition values per token (or word, sentence, paragraph), each text's rounds
run by the engine.

`explain_encoded` is the one implementation of "explain these texts": the service calls it for the
HTTP path in single-process mode and for the Celery task alike. Each text's Owen recursion is
sequential (a round's masks depend on the previous round's outputs), so a text submits its next
round as soon as its previous one is back; the engine merges the rounds of every text and every
request in flight into shared passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace

import numpy as np

from shared.errors import InvalidRequest
from shared.explanation.faithfulness import BINS, aopc, deletions
from shared.explanation.masking import TextMask, token_segments
from shared.explanation.owen import OwenSteps, owen_values, text_clustering
from shared.explanation.units import joined_clustering, pair_units, stripped_span, text_units
from shared.io.inputs import Input, TextPair
from shared.io.results import Explanation, Faithfulness
from shared.io.schemas import ExplainOptions
from shared.kinds import Output
from shared.runtime.encoding import PAIRS_ARE_TRUNCATED, EncodedText
from shared.runtime.engine import EXPLAIN, Engine, Ticket
from shared.runtime.model import TextModel

# Bumped whenever a change to the algorithm (owen.py, units.py, this module) or to the Explanation
# format could change a number or a field: cache entries of another version are never served.
ALGORITHM_VERSION = 5


@dataclass
class _Game:
    """One text's Shapley game: its encoding, its players and kept positions, its tree, and its
    running Owen recursion (several texts' games advance together, each as its outputs arrive)."""

    encoded: EncodedText
    keep: np.ndarray  # tokens never masked ([CLS], [SEP])
    player_of_token: np.ndarray  # each token's player (token or unit), -1 for one that is always kept
    players: int
    spans: list[tuple[int, int]] | None  # each unit's [start, end); None at token granularity
    clustering: np.ndarray
    label_indexes: list[int]
    steps: OwenSteps | None = None
    pending: np.ndarray | None = None
    values: np.ndarray | None = None
    evaluations: int = 0
    stopped: bool = False  # the time budget ended the walk before max_evals or the whole tree
    # time_budget: when refinement must end (monotonic), and how long this text's last round took
    stop_at: float | None = None
    round_started: float = 0.0
    last_round_s: float = 0.0
    f00: np.ndarray | None = None
    f11: np.ndarray | None = None
    # The model rows this text ran, by their ids: a windowed document's mask changes only the
    # windows holding what it masks, so its other windows are looked up here instead of run again.
    memo: dict[bytes, np.ndarray] = field(default_factory=dict)
    wanted: list[list[bytes]] = field(default_factory=list)  # each pending document's rows
    asked: list[bytes] = field(default_factory=list)  # the rows in flight
    rows_run: int = 0
    rows_memoised: int = 0
    documents: int = 0  # the (masked) documents evaluated so far, the two ends included
    budget: int = 0  # the most documents it may take (progress)
    # masking "text": the text's token substrings, from which each masked text is rebuilt, and how
    segments: list[str] | None = None
    text_mask: TextMask | None = None
    # A text pair: each player's text (0: text, 1: text_pair)
    sides: list[int] | None = None
    requested: list[int] | None = None  # the label indexes asked for; None: the predicted ones
    # masking "text" on a text pair or a zero-shot text: the players are the tokens of another
    # encoding than the one scored (the two texts joined by the separator, or the zero-shot text
    # alone, as SHAP's Text masker tokenizes one string), and `reencode` turns each masked string
    # back into what is scored (the pair, split at the separator, or the zero-shot text), encoded
    # as the pipeline encodes it
    view: EncodedText | None = None
    reencode: Callable[[list[str]], list[EncodedText]] | None = None

    @property
    def tokens(self) -> EncodedText:
        """The encoding whose tokens the players are (and whose text the units index)."""
        return self.view if self.view is not None else self.encoded

    def rows_needed(self, documents: list[list[np.ndarray]]) -> list[np.ndarray]:
        """The model rows these (masked) documents need that this text has not run yet."""
        self.wanted, missing = [], {}
        for rows in documents:
            keys = []
            for row in rows:
                key = row.tobytes()
                keys.append(key)
                if key not in self.memo and key not in missing:
                    missing[key] = row
            self.wanted.append(keys)
        self.rows_run += len(missing)
        self.rows_memoised += sum(map(len, self.wanted)) - len(missing)
        self.asked = list(missing)
        return list(missing.values())

    def out_of_time(self) -> bool:
        """Anytime values: would one more round like the last end past the time budget?"""
        assert self.stop_at is not None
        return time.monotonic() + self.last_round_s > self.stop_at

    def received(self, logits: np.ndarray) -> None:
        self.memo.update(zip(self.asked, logits, strict=True))

    def outputs(self, model: TextModel, kind: Output) -> np.ndarray:
        """The pending documents' outputs (documents x labels), each from its rows' logits."""
        return np.stack(
            [
                model.document_outputs(self.encoded, np.stack([self.memo[k] for k in keys]), kind)
                for keys in self.wanted
            ]
        )

    def masked_documents(self, masks: np.ndarray, model: TextModel) -> list[list[np.ndarray]]:
        """Each mask's model rows (masks over the players): a masked-out unit masks all its tokens,
        by their ids (masking "tokens") or in the text, tokenized again (masking "text")."""
        present = np.ones((len(masks), len(self.tokens.ids)), dtype=bool)
        played = self.player_of_token >= 0
        present[:, played] = masks[:, self.player_of_token[played]]
        present |= self.keep
        if self.segments is None or self.text_mask is None:
            return [
                self.encoded.rows(ids) for ids in np.where(present, self.encoded.ids, model.mask_token_id)
            ]
        texts = [self.text_mask.masked_text(self.segments, row) for row in present]
        if self.reencode is not None:
            return [e.rows(e.ids) for e in self.reencode(texts)]
        return [self.encoded.rows(e.ids) for e in model.encode(texts)]


def explain_texts(
    engine: Engine, texts: Sequence[Input], options: ExplainOptions, ticket: Ticket | None = None
) -> list[Explanation]:
    return explain_encoded(engine, engine.model.encode(texts, options.long_text), options, ticket)


def explain_encoded(
    engine: Engine,
    encoded: Sequence[EncodedText],
    options: ExplainOptions,
    ticket: Ticket | None = None,
    unmasked: Sequence[np.ndarray] | None = None,
) -> list[Explanation]:
    """Explain every text. `unmasked`: the logits of each text's rows as it is, when they already
    ran (to classify it): they are not run again. The ticket's deadline or cancellation stops the
    work within one pass (its error is raised here, and the engine drops the rows still queued).

    Progress goes to `ticket.report` as documents evaluated out of the most the texts may take:
    `max_evals` each (2 for a text of one unit). A text whose tree is walked whole sooner jumps to
    its end."""
    model = engine.model
    ticket = ticket or Ticket()
    # Unknown labels fail before any work (a zero-shot text's labels are its candidates).
    requested = [requested_label_indexes(model.labels_of(e), options) for e in encoded]
    games = [new_game(model, e, options) for e in encoded]
    for game, wanted in zip(games, requested, strict=True):
        game.requested = wanted
    stop_at = _stop_at(ticket, options)
    for game in games:
        game.budget = 2 if game.players <= 1 else options.max_evals
        game.stop_at = stop_at
    total, done = sum(game.budget for game in games), 0
    for game, logits in zip(games, unmasked or (), strict=False):
        game.memo.update(
            zip((row.tobytes() for row in game.encoded.rows(game.encoded.ids)), logits, strict=True)
        )
    in_flight: dict[Future, _Game] = {}

    def step(game: _Game) -> None:
        """Hand the pending documents' outputs to the text's recursion, which asks for the next."""
        if game.steps is None:
            _start(game, engine, options)
        else:
            _advance(game, game.outputs(model, options.output)[:, game.label_indexes])

    def feed(game: _Game, documents: list[list[np.ndarray]]) -> None:
        """Submit the rows these documents need; when every one was run already, step at once."""
        nonlocal done
        while True:
            counted = min(game.documents, game.budget)
            game.documents += len(documents)
            done += min(game.documents, game.budget) - counted
            rows = game.rows_needed(documents)
            if rows:
                game.round_started = time.monotonic()
                in_flight[engine.submit(rows, EXPLAIN, options.precision, ticket)] = game
                return
            step(game)
            if game.pending is None:
                return
            documents = game.masked_documents(game.pending, model)

    try:
        for game in games:  # first the all-masked and unmasked documents: base value and model output
            ends = np.zeros((2, game.players), dtype=bool)  # all masked, none masked
            ends[1] = True
            feed(game, game.masked_documents(ends, model))
        while in_flight:
            ticket.check()
            ticket.report(done, total)
            back, _ = wait(list(in_flight), timeout=ticket.wait_s(3600), return_when=FIRST_COMPLETED)
            for future in back:
                game = in_flight.pop(future)
                game.last_round_s = time.monotonic() - game.round_started
                game.received(future.result())  # the ticket's error, if the engine dropped the rows
                step(game)
                if game.pending is not None:
                    feed(game, game.masked_documents(game.pending, model))
    except BaseException:
        engine.cancel(ticket)  # drop the other texts' queued rounds
        raise
    ticket.report(total, total)
    explanations = [_explanation(model, game, options) for game in games]
    if not options.faithfulness:
        return explanations
    measures = _faithfulness(engine, games, options, ticket)
    return [e.model_copy(update={"faithfulness": f}) for e, f in zip(explanations, measures, strict=True)]


def _faithfulness(
    engine: Engine, games: list[_Game], options: ExplainOptions, ticket: Ticket
) -> list[dict[str, Faithfulness]]:
    """Each text's ERASER measures per explained label (shared/explanation/faithfulness.py), from
    one more submission to the engine: every deletion of every text, each distinct row once."""
    model = engine.model
    plans = []
    rows: dict[bytes, np.ndarray] = {}
    for game in games:
        assert game.values is not None
        for row in game.encoded.rows(game.encoded.ids):  # the whole text: run to classify it, or now
            if row.tobytes() not in game.memo:
                rows.setdefault(row.tobytes(), row)
        plan = []
        for deletion in deletions(game.values, game.label_indexes, game.player_of_token, game.keep):
            documents = []
            for kept in (*deletion.comprehensive, *deletion.sufficient):
                keys = []
                for row in game.encoded.rows_shortened(game.encoded.ids[kept]):
                    keys.append(row.tobytes())
                    rows.setdefault(keys[-1], row)
                documents.append(keys)
            plan.append((deletion.label_index, documents))
        plans.append(plan)
    logits = dict(zip(rows, _run_rows(engine, list(rows.values()), options, ticket), strict=True))

    def score(game: _Game, keys: list[bytes], label_index: int) -> float:
        document = np.stack([logits[k] if k in logits else game.memo[k] for k in keys])
        return float(model.document_outputs(game.encoded, document, "probability")[label_index])

    measures = []
    for game, plan in zip(games, plans, strict=True):
        whole = [row.tobytes() for row in game.encoded.rows(game.encoded.ids)]
        by_label = {}
        for label_index, documents in plan:
            full = score(game, whole, label_index)
            deleted = [score(game, keys, label_index) for keys in documents]
            by_label[model.labels[label_index]] = Faithfulness(
                comprehensiveness=aopc(full, deleted[: len(BINS)]),
                sufficiency=aopc(full, deleted[len(BINS) :]),
            )
        measures.append(by_label)
    return measures


def faithfulness_of(
    engine: Engine,
    texts: Sequence[str],
    options: ExplainOptions,
    values: Sequence[np.ndarray],
    label_indexes: Sequence[list[int]],
    ticket: Ticket | None = None,
) -> list[dict[str, Faithfulness]]:
    """The faithfulness of any attributions over the units `options` makes of each text (players x
    labels, for those label indexes): how a ranking other than SHAP's (leave-one-out, random) fares,
    measured exactly as an explanation's own is."""
    games = [new_game(engine.model, e, options) for e in engine.model.encode(texts, options.long_text)]
    for game, given, labels in zip(games, values, label_indexes, strict=True):
        if given.shape != (game.players, len(labels)):
            raise ValueError(f"values of shape {given.shape}; the text has {game.players} units")
        game.values, game.label_indexes = np.asarray(given, dtype=np.float64), list(labels)
    return _faithfulness(engine, games, options, ticket or Ticket())


def players_of(engine: Engine, texts: Sequence[str], options: ExplainOptions) -> list[int]:
    """How many units (players) `options` makes of each text."""
    return [new_game(engine.model, e, options).players for e in engine.model.encode(texts, options.long_text)]


def _run_rows(engine: Engine, rows: list[np.ndarray], options: ExplainOptions, ticket: Ticket) -> np.ndarray:
    """Run rows through the engine within the ticket (its deadline, its cancellation)."""
    future = engine.submit(rows, EXPLAIN, options.precision, ticket)
    try:
        while not future.done():
            ticket.check()
            wait([future], timeout=ticket.wait_s(3600))
        return future.result()
    except BaseException:
        engine.cancel(ticket)
        raise


def _stop_at(ticket: Ticket, options: ExplainOptions) -> float | None:
    """When a time_budget ends refinement: that long after the request (or job) started, and never
    after its own deadline (which would make it a 503 instead)."""
    if options.time_budget is None:
        return None
    stop_at = ticket.started + options.time_budget
    return stop_at if ticket.deadline is None else min(stop_at, ticket.deadline)


def _start(game: _Game, engine: Engine, options: ExplainOptions) -> None:
    model = engine.model
    ends = game.outputs(model, options.output)
    game.f00, game.f11 = ends[0], ends[1]
    game.label_indexes = game.requested or predicted_label_indexes(
        model.multi_label_of(game.encoded), game.outputs(model, "probability")[1]
    )
    idx = game.label_indexes
    rng = np.random.RandomState(options.seed)
    assert options.batch_size is not None  # filled in from the settings when the options were parsed
    if game.players <= 1:
        return  # a single player (or none): no tree to walk (see _explanation)
    # Rounds of a short text are far smaller than a pass; fill them with the masks the recursion is
    # likely to need next (same numbers, fewer passes).
    length = len(game.encoded.rows(game.encoded.ids)[0])  # a row: the text, or one of its windows
    rows_per_pass = min(engine.limits.rows, max(1, engine.limits.tokens // length))
    f00, f11 = game.f00[idx], game.f11[idx]
    game.steps = owen_values(
        game.clustering,
        f00,
        f11,
        options.max_evals,
        options.batch_size,
        rng,
        lookahead=rows_per_pass,
        spare=engine.limits.spare_tokens // length,
        stop=game.out_of_time if game.stop_at is not None else None,
    )
    _advance(game, None)


def _advance(game: _Game, outputs: np.ndarray | None) -> None:
    assert game.steps is not None
    try:
        game.pending = game.steps.send(outputs)  # type: ignore[arg-type]
    except StopIteration as done:
        game.values, game.evaluations, game.stopped = done.value
        game.pending = None


def new_game(model: TextModel, encoded: EncodedText, options: ExplainOptions) -> _Game:
    if options.masking == "text" and (encoded.text_pair is not None or encoded.zero_shot is not None):
        return _text_masked_game(model, encoded, options)
    if encoded.text_pair is not None:
        return _pair_game(model, encoded, options)
    by_text = options.masking == "text"
    length = len(encoded.ids)
    keep = np.zeros(length, dtype=bool)
    keep[: model.keep_prefix] = True
    if model.keep_suffix:
        keep[length - model.keep_suffix :] = True
    if encoded.zero_shot is not None:  # the text's part of a pair row: every special token is kept
        check_pair_options(options)
        keep |= encoded.special
    if options.granularity == "token":  # SHAP's players and tree, boundary tokens included
        segments = token_segments(encoded.text, encoded.offsets)
        clustering = text_clustering(segments, model.tokenizer.sep_token) if length > 1 else np.zeros((0, 4))
        players, spans = np.arange(length), None
    else:
        units = text_units(encoded.text, encoded.offsets, keep, options.granularity)
        players, spans, clustering = units.of_token, units.spans, units.clustering
    return _Game(
        encoded=encoded,
        keep=keep,
        player_of_token=players,
        players=length if spans is None else len(spans),
        spans=spans,
        clustering=clustering,
        label_indexes=[],
        segments=token_segments(encoded.text, encoded.offsets) if by_text else None,
        text_mask=TextMask.of(model.tokenizer) if by_text else None,
    )


def _pair_game(model: TextModel, encoded: EncodedText, options: ExplainOptions) -> _Game:
    """A text pair's game: players from both texts, the tree's first split between the two texts
    (each text's own tree under its half), every special token kept ([CLS], the [SEP]s between and
    after the texts: SHAP never masks its separator)."""
    check_pair_options(options)
    assert encoded.text_pair is not None and encoded.sequence is not None
    keep = encoded.sequence < 0
    texts = (encoded.text, encoded.text_pair)
    if options.granularity == "token":
        split = int(np.argmax(encoded.sequence == 1))  # the second text's first token
        segments = _pair_segments(encoded)
        sep = model.tokenizer.sep_token
        halves = [segments[:split], segments[split:]]
        trees = [text_clustering(half, sep) if len(half) > 1 else np.zeros((0, 4)) for half in halves]
        clustering = joined_clustering(trees[0], len(halves[0]), trees[1], len(halves[1]))
        players, spans = np.arange(len(encoded.ids)), None
        sides = [int(s) if s >= 0 else int(i >= split) for i, s in enumerate(encoded.sequence)]
    else:
        units, sides = pair_units(texts, encoded.offsets, encoded.sequence, keep, options.granularity)
        players, spans, clustering = units.of_token, units.spans, units.clustering
    return _Game(
        encoded=encoded,
        keep=keep,
        player_of_token=players,
        players=len(encoded.ids) if spans is None else len(spans),
        spans=spans,
        clustering=clustering,
        label_indexes=[],
        sides=sides,
    )


def _text_masked_game(model: TextModel, encoded: EncodedText, options: ExplainOptions) -> _Game:
    """masking "text" on a text pair or a zero-shot text, as SHAP explains text of several inputs (its
    question-answering example): SHAP's Text masker over one string, the pair's two texts joined by
    the tokenizer's separator (which it never masks), or the zero-shot text alone; the model reads
    each masked string back as the pair (split at the separator) or as the zero-shot text, encoded
    as the pipeline encodes it. At token granularity the tree is SHAP's own over that string: for a
    pair its first split falls between the two texts (the separator on the shorter side). A
    truncated text is explained over the part the model reads, as a single text is."""
    check_pair_options(options)
    if encoded.zero_shot is not None:
        item = encoded.zero_shot
        (alone,) = model.encode([_read_part(encoded.text, encoded.offsets, encoded.truncated)])
        game = new_game(model, alone, options)  # the single text's game, masked as text
        game.encoded, game.view = encoded, alone
        game.reencode = lambda texts: model.encode([replace(item, text=t) for t in texts])
        return game
    assert encoded.text_pair is not None and encoded.sequence is not None
    sep = model.tokenizer.sep_token
    texts = (encoded.text, encoded.text_pair)
    if not sep or any(sep in text for text in texts):
        raise InvalidRequest(
            "masking \"text\" joins a pair's two texts with the tokenizer's separator "
            f"{sep!r}, as SHAP does: a text that holds it cannot be read back; mask by token"
        )
    parts = [
        _read_part(
            text,
            [o for o, s in zip(encoded.offsets, encoded.sequence, strict=True) if s == side],
            name in encoded.truncated_texts,
        )
        for side, (text, name) in enumerate(zip(texts, ("text", "text_pair"), strict=True))
    ]
    joined = parts[0] + sep + parts[1]
    (view,) = model.encode([joined])
    boundary = (len(parts[0]), len(parts[0]) + len(sep))
    sep_id = model.tokenizer.sep_token_id
    at = [i for i, o in enumerate(view.offsets) if o == boundary and view.ids[i] == sep_id]
    if view.truncated or len(at) != 1:
        raise InvalidRequest(
            f'masking "text": this tokenizer does not read the two texts joined by {sep!r} as SHAP '
            "joins them; mask by token"
        )
    (b,) = at
    length = len(view.ids)
    keep = np.zeros(length, dtype=bool)
    keep[: model.keep_prefix] = True
    if model.keep_suffix:
        keep[length - model.keep_suffix :] = True
    keep[b] = True  # SHAP never masks its separator
    sequence = np.where(keep, -1, (np.arange(length) > b).astype(np.int64))
    start = boundary[1]
    offsets = [
        o if s != 1 else (o[0] - start, o[1] - start) for o, s in zip(view.offsets, sequence, strict=True)
    ]
    pair_view = replace(
        view,
        text=encoded.text,
        offsets=offsets,
        special=keep.copy(),
        truncated=encoded.truncated,
        text_pair=encoded.text_pair,
        sequence=sequence,
        truncated_texts=encoded.truncated_texts,
    )
    segments = token_segments(joined, view.offsets)
    if options.granularity == "token":
        clustering = text_clustering(segments, sep)
        players, spans = np.arange(length), None
        sides = [int(s) if s >= 0 else int(i > b) for i, s in enumerate(sequence)]
    else:
        units, sides = pair_units(texts, offsets, sequence, keep, options.granularity)
        players, spans, clustering = units.of_token, units.spans, units.clustering

    def reencode(masked: list[str]) -> list[EncodedText]:
        return model.encode([TextPair(*_split_at(text, sep)) for text in masked])

    return _Game(
        encoded=encoded,
        keep=keep,
        player_of_token=players,
        players=length if spans is None else len(spans),
        spans=spans,
        clustering=clustering,
        label_indexes=[],
        segments=segments,
        text_mask=TextMask.of(model.tokenizer),
        sides=sides,
        view=pair_view,
        reencode=reencode,
    )


def _read_part(text: str, offsets: Sequence[tuple[int, int]], truncated: bool) -> str:
    """The text, or of a truncated one the part the model reads (up to its last token's end)."""
    return text[: max((end for _, end in offsets), default=0)] if truncated else text


def _split_at(masked: str, sep: str) -> tuple[str, str]:
    """A masked pair's two texts: what comes before and after its separator (neither text holds it,
    and masking never touches it)."""
    first, _, second = masked.partition(sep)
    return first, second


def check_pair_options(options: ExplainOptions) -> None:
    """What the explanation of a text pair or a zero-shot text (rows of two texts) cannot take,
    each a 400 (the encoder refuses long_text "windows" too, for a classification alone)."""
    if options.long_text == "windows":
        raise InvalidRequest(PAIRS_ARE_TRUNCATED)
    if options.precision == "amortized":
        raise InvalidRequest(
            'precision "amortized" learnt single texts: explain text pairs and zero-shot labels exact or fast'
        )
    if options.faithfulness:
        raise InvalidRequest(
            "faithfulness is measured on single texts, not on text pairs or zero-shot labels"
        )


def _pair_segments(encoded: EncodedText) -> list[str]:
    """Each token's substring of its own text (special tokens: empty), as SHAP's Text masker cuts one
    text's tokens."""
    assert encoded.text_pair is not None and encoded.sequence is not None
    texts = {0: encoded.text, 1: encoded.text_pair}
    segments = [""] * len(encoded.offsets)
    next_start: dict[int, int | None] = {0: None, 1: None}  # the next token's start, in each text
    for i in range(len(encoded.offsets) - 1, -1, -1):
        side = int(encoded.sequence[i])
        if side < 0:
            continue
        start, end = encoded.offsets[i]
        following = next_start[side]
        segments[i] = texts[side][start : end if following is None else max(end, following)]
        next_start[side] = start
    return segments


def check_options(model: TextModel, options: ExplainOptions, labels: Sequence[str] | None = None) -> None:
    """Raise InvalidRequest for options this model cannot explain (before a job is accepted);
    `labels`: the labels the texts are scored on, when not the model's (zero-shot candidates)."""
    requested_label_indexes(list(labels) if labels is not None else model.labels, options)


def requested_label_indexes(labels: list[str], options: ExplainOptions) -> list[int] | None:
    """The labels asked for by name or "all"; None for "predicted" (known once the text ran)."""
    if options.labels == "all":
        return list(range(len(labels)))
    if options.labels == "predicted":
        return None
    unknown = [label for label in options.labels if label not in labels]
    if unknown:
        raise InvalidRequest(
            f"parameters.labels: unknown label(s) {unknown}; the texts are scored on {labels}"
        )
    return [labels.index(label) for label in dict.fromkeys(options.labels)]


def predicted_label_indexes(multi_label: bool, probabilities: np.ndarray) -> list[int]:
    if multi_label:
        chosen = [i for i, p in enumerate(probabilities) if p >= 0.5]
        return chosen or [int(np.argmax(probabilities))]
    return [int(np.argmax(probabilities))]


def _explanation(model: TextModel, game: _Game, options: ExplainOptions) -> Explanation:
    f00, f11 = game.f00, game.f11
    assert f00 is not None and f11 is not None
    if game.values is None:  # a single player: no tree to walk, the whole difference is its credit
        game.values = (f11 - f00)[game.label_indexes][None, :][: game.players]
        game.evaluations = 2
    units, spans = units_of(model, game)
    labels = [model.labels_of(game.encoded)[i] for i in game.label_indexes]
    return Explanation(
        units=units,
        offsets=spans,
        segments=game.sides,
        granularity=options.granularity,
        long_text=options.long_text,
        windows=len(game.encoded.windows) or 1,
        window_tokens=model.window_width if game.encoded.windows else None,
        windows_run=game.rows_run if game.encoded.windows else None,
        windows_memoised=game.rows_memoised if game.encoded.windows else None,
        labels=labels,
        values={label: [float(v) for v in game.values[:, k]] for k, label in enumerate(labels)},
        base_values={label: float(f00[i]) for label, i in zip(labels, game.label_indexes, strict=True)},
        model_output={label: float(f11[i]) for label, i in zip(labels, game.label_indexes, strict=True)},
        output=options.output,
        max_evals=options.max_evals,
        evaluations=game.evaluations,
        complete=None if options.time_budget is None else not game.stopped,
        seed=options.seed,
        precision=options.precision,
        batch_size=options.batch_size,
        truncated=game.encoded.truncated,
        masking=options.masking,
    )


def units_of(model: TextModel, game: _Game) -> tuple[list[str], list[tuple[int, int]]]:
    """The game's units as the response lists them: their text and their [start, end) spans."""
    return _token_units(model, game) if game.spans is None else _text_units(game)


def _token_units(model: TextModel, game: _Game) -> tuple[list[str], list[tuple[int, int]]]:
    """Token granularity: every token, the boundary ones ([CLS], [SEP]) by name at the text's edges.
    A token's text and span leave out the whitespace its offsets may hold (byte-level BPE and
    SentencePiece tokens start with the space before their word): a space marker alone is empty."""
    text, offsets, ids = game.tokens.text, game.tokens.offsets, game.tokens.ids
    if game.sides is not None:
        return _pair_token_units(model, game)
    tokens, spans = [], []
    end_of_text = max((end for _, end in offsets), default=0)
    for i, (start, end) in enumerate(offsets):
        if game.keep[i]:
            tokens.append(model.tokenizer.convert_ids_to_tokens(int(ids[i])))
            edge = 0 if i < model.keep_prefix else end_of_text
            spans.append((edge, edge))
        else:
            start, end = stripped_span(text, start, end)
            tokens.append(text[start:end])
            spans.append((start, end))
    return tokens, spans


def _pair_token_units(model: TextModel, game: _Game) -> tuple[list[str], list[tuple[int, int]]]:
    """A pair's tokens: each in its own text; a special token by name, at the start of the first
    text ([CLS]) or at the end of the text it closes."""
    encoded, sides = game.tokens, game.sides
    assert sides is not None and encoded.text_pair is not None
    texts = (encoded.text, encoded.text_pair)
    ends = [max((e for (_, e), s in zip(encoded.offsets, encoded.sequence, strict=True) if s == i), default=0)
            for i in (0, 1)]  # fmt: skip
    tokens, spans = [], []
    for i, (start, end) in enumerate(encoded.offsets):
        if game.keep[i]:
            tokens.append(model.tokenizer.convert_ids_to_tokens(int(encoded.ids[i])))
            edge = 0 if i == 0 else ends[sides[i]]
            spans.append((edge, edge))
        else:
            start, end = stripped_span(texts[sides[i]], start, end)
            tokens.append(texts[sides[i]][start:end])
            spans.append((start, end))
    return tokens, spans


def _text_units(game: _Game) -> tuple[list[str], list[tuple[int, int]]]:
    assert game.spans is not None
    if game.sides is None:
        return [game.tokens.text[start:end] for start, end in game.spans], game.spans
    texts = (game.tokens.text, game.tokens.text_pair or "")
    return [
        texts[side][start:end] for side, (start, end) in zip(game.sides, game.spans, strict=True)
    ], game.spans
