"""Word, sentence and paragraph granularity: the units a reader sees, the tree over them, and the
explanations over them (each unit masked as a whole, additivity, the Shapley values by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.explanation.explainer import explain_texts, new_game
from shared.explanation.owen import mask_matrix
from shared.io.schemas import ExplainOptions
from shared.runtime.engine import Engine


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    from tests.support import start_engine

    engine = start_engine(tiny_model_dir)
    yield engine
    engine.stop()


def units_of(engine: Engine, text: str, granularity: str):
    encoded = engine.model.encode([text])[0]
    game = new_game(engine.model, encoded, ExplainOptions(granularity=granularity))
    return encoded, game, [text[start:end] for start, end in game.spans]


def options(**values) -> ExplainOptions:
    return ExplainOptions(**({"max_evals": 2000, "labels": "all"} | values))


# ---- what a unit is ---------------------------------------------------------------------------


def test_words_join_subword_pieces_and_keep_punctuation_apart(engine: Engine) -> None:
    text = "Superbly unremarkable, it wasn't great!!! A well-made film, $3.50 in the U.S."
    encoded, game, words = units_of(engine, text, "word")
    assert words == [
        "Superbly", "unremarkable", ",", "it", "wasn't", "great", "!!!", "A", "well-made", "film", ",",
        "$", "3.50", "in", "the", "U.S.",
    ]  # fmt: skip
    # "superbly" is several WordPiece tokens of the tiny vocabulary: all of them are unit 0.
    first = [t for t, (s, e) in enumerate(encoded.offsets) if 0 <= s < e <= len("Superbly")]
    assert len(first) > 1 and set(game.player_of_token[first]) == {0}
    # Boundary tokens are no unit (always kept); every other token is in exactly one unit.
    assert game.player_of_token[0] == -1 and game.player_of_token[-1] == -1
    assert (game.player_of_token[1:-1] >= 0).all()


def test_scripts_without_spaces_are_not_one_giant_word(engine: Engine) -> None:
    _, _, words = units_of(engine, "我喜欢这部电影。 ok", "word")
    assert words == ["我", "喜", "欢", "这", "部", "电", "影", "。", "ok"]


def test_sentences_handle_abbreviations_decimals_and_quotes(engine: Engine) -> None:
    text = 'Mr. Smith paid $3.50 for it. "Is it good?" she asked. It was great.'
    _, _, sentences = units_of(engine, text, "sentence")
    assert sentences == ["Mr. Smith paid $3.50 for it.", '"Is it good?" she asked.', "It was great."]


def test_threads_cutting_sentences_at_once_get_what_one_thread_gets(engine: Engine) -> None:
    """pysbd's Segmenter keeps the text it segments on itself: shared by threads (a threads pool,
    HTTP threads), one thread's sentences came from another's text (a windowed job's word unit
    spanned 479 characters). Each thread has its own."""
    import threading

    texts = [" ".join(f"Sentence {i} of text {t} is here." for i in range(60)) for t in range(4)]
    expected = [units_of(engine, text, "sentence")[2] for text in texts]
    failures: list[int] = []

    def cut(index: int) -> None:
        for _ in range(10):
            if units_of(engine, texts[index], "sentence")[2] != expected[index]:
                failures.append(index)

    threads = [threading.Thread(target=cut, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:5]


def test_paragraphs_are_blocks_between_blank_lines(engine: Engine) -> None:
    text = "First one. Still first.\n\n  Second one.\nSame paragraph.\n\n\nThird."
    _, _, paragraphs = units_of(engine, text, "paragraph")
    assert paragraphs == ["First one. Still first.", "Second one.\nSame paragraph.", "Third."]
    _, _, lines = units_of(engine, "one line\nanother line", "paragraph")
    assert lines == ["one line", "another line"]  # no blank line: each line is a paragraph


def test_spans_point_into_the_text_and_units_are_whole_tokens(engine: Engine) -> None:
    text = "The plot (such as it is) drags.\n\nBut the acting, frankly, is superb!"
    for granularity in ("word", "sentence", "paragraph"):
        encoded, game, texts = units_of(engine, text, granularity)
        for u, (start, end) in enumerate(game.spans):
            assert texts[u] == text[start:end] and texts[u] == texts[u].strip() and texts[u]
            tokens = np.flatnonzero(game.player_of_token == u)
            assert all(start <= encoded.offsets[t][0] < encoded.offsets[t][1] <= end for t in tokens)
        assert [s for s, _ in game.spans] == sorted(s for s, _ in game.spans)


def test_the_tree_nests_words_inside_sentences_inside_paragraphs(engine: Engine) -> None:
    text = "good film . bad end .\n\nfunny cast . weak plot ."
    _, game, words = units_of(engine, text, "word")
    assert len(words) == 12
    subtrees = {tuple(np.flatnonzero(row)) for row in mask_matrix(game.clustering)}
    for group in [(0, 1, 2), (3, 4, 5), (6, 7, 8), (9, 10, 11), tuple(range(6)), tuple(range(6, 12))]:
        assert group in subtrees, group
    assert game.clustering[:, 3].max() == 12 and np.isclose(game.clustering[:, 2].max(), 1.0)


def test_truncated_text_has_units_up_to_the_limit(engine: Engine) -> None:
    text = " ".join(["good film ."] * 40)  # far past the tiny model's 64 tokens
    encoded, game, words = units_of(engine, text, "word")
    assert encoded.truncated and 0 < len(words) < 120
    assert game.spans[-1][1] <= encoded.offsets[-2][1]


def test_unknown_granularity_is_a_400() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ExplainOptions(granularity="character")


# ---- explanations over units -------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["word", "sentence", "paragraph"])
@pytest.mark.parametrize("output", ["probability", "logit"])
def test_additivity_for_every_label(engine: Engine, granularity: str, output: str) -> None:
    texts = ["i loved this film , the acting was superb .\n\nboring . one long string of cliches ."]
    (explanation,) = explain_texts(engine, texts, options(granularity=granularity, output=output))
    assert explanation.granularity == granularity and len(explanation.labels) == len(engine.model.labels)
    for label in explanation.labels:
        total = explanation.base_values[label] + sum(explanation.values[label])
        assert total == pytest.approx(explanation.model_output[label], abs=1e-5)
    assert explanation.units == [texts[0][s:e] for s, e in explanation.offsets]


def test_two_units_get_their_shapley_values(engine: Engine) -> None:
    """With two players the Owen value is the Shapley value: computed here from four model calls."""
    text = "superb acting .\n\nboring plot ."
    model = engine.model
    (explanation,) = explain_texts(engine, [text], options(granularity="paragraph", output="logit"))
    encoded = model.encode([text])[0]
    ids, first = np.array(encoded.ids), np.array([s < text.index("\n") for s, _ in encoded.offsets])
    inner = np.ones(len(ids), dtype=bool)
    inner[[0, -1]] = False  # [CLS] and [SEP] are always kept

    def f(keep_first: bool, keep_second: bool) -> np.ndarray:
        present = ~inner | (first & keep_first) | (~first & inner & keep_second)
        return model.forward([np.where(present, ids, model.mask_token_id)])[0]

    first_value = ((f(True, False) - f(False, False)) + (f(True, True) - f(False, True))) / 2
    for k, label in enumerate(model.labels):
        assert explanation.values[label][0] == pytest.approx(first_value[k], abs=1e-5)


def test_every_row_masks_whole_units(engine: Engine) -> None:
    text = "superbly unremarkable , frankly .\n\nthe acting was superb ."
    encoded, game, _ = units_of(engine, text, "word")
    rng = np.random.default_rng(0)
    masks = rng.random((50, game.players)) < 0.5
    for (row,), mask in zip(game.masked_documents(masks, engine.model), masks, strict=True):
        for t, unit in enumerate(game.player_of_token):
            expected = encoded.ids[t] if unit < 0 or mask[unit] else engine.model.mask_token_id
            assert row[t] == expected


def test_fewer_players_need_fewer_evaluations(engine: Engine) -> None:
    text = "it 's played in the most straight-faced fashion , with little humor to lighten things up ."
    counts = {
        g: explain_texts(engine, [text], options(granularity=g, max_evals=5000))[0].evaluations
        for g in ("token", "word", "sentence")
    }
    assert counts["sentence"] == 2 < counts["word"] < counts["token"]


def test_the_cache_tells_granularities_apart(engine: Engine) -> None:
    from shared.serving.cache import explanation_key

    keys = {explanation_key("model", "text", ExplainOptions(granularity=g)) for g in ("token", "word")}
    assert len(keys) == 2
