"""Dataset analyses of text pairs (pair_field) and zero-shot labels (candidate_labels) over real HTTP
with the tiny NLI model: inline (SERVERLESS), on a real Redis and Celery worker, and through
`clarion analyze --pair-field`. Each analysis equals the fold of /invocations' answers for the same
records; a pair's units stay apart from the same words of its text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.analysis.aggregate import AnalysisOptions, analyze_records
from tests.support import Service, job_stack, run_cli, running_service, wait_healthy, wait_until
from tests.test_analysis import assert_same_analysis

# "music" and "guitar" are words of both texts: the analysis must keep them apart.
PAIRS = [
    ("a man plays a guitar and makes music", "someone is making music", "entailment"),
    ("is it raining outside today?", "the sky is clear, not a cloud anywhere", "neutral"),
    ("the guitar is broken", "a guitar plays music", "contradiction"),
    ("two dogs run in the park", "animals are outside", "entailment"),
    ("the concert was cancelled", "the music played all night", "contradiction"),
]
ROWS = [{"premise": p, "hypothesis": h, "gold": g} for p, h, g in PAIRS]
ROWS.insert(2, {"premise": "a record without its second text", "gold": "neutral"})  # its own error
PAIR_QUERY = {"text_field": "premise", "pair_field": "hypothesis", "label_field": "gold", "max_evals": "40"}

TEXTS = ["the match went to extra time", "parliament passed the budget", "the band played a new song"]
CANDIDATES = ["sports", "politics", "music"]
ZERO_SHOT_QUERY = {"candidate_labels": ",".join(CANDIDATES), "multi_label": "true", "max_evals": "40"}


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def post(service: Service, data: bytes, content_type: str = "application/jsonlines", **query: str):
    return service.post(
        "/analyses", data=data, headers={"Content-Type": content_type}, params=query, timeout=300
    )


@pytest.fixture(scope="module")
def nli(tiny_nli_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny NLI model served in one process: analyses run within their request."""
    env = {
        "MODEL_DIR": str(tiny_nli_dir),
        "SERVERLESS": "true",
        "TORCH_THREADS": "1",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "ANALYSIS_CHUNK_TEXTS": "2",
    }
    with running_service(tmp_path_factory.mktemp("nli-analyses"), env) as service:
        wait_healthy(service)
        yield service


def folded(service: Service, inputs: list[Any], labels: list[str | None], options: AnalysisOptions, **body):
    """The analysis of /invocations' answers for these inputs: what every analysis must equal."""
    answer = service.post(
        "/invocations", json={"data": inputs, "explain": True, "granularity": "word", "max_evals": 40, **body}
    )
    assert answer.status_code == 200, answer.text
    records = []
    for line, (item, label, result) in enumerate(zip(inputs, labels, answer.json(), strict=True), 1):
        texts = item if isinstance(item, dict) else {"text": item}
        truth = {} if label is None else {"true_label": label}
        records.append(json.dumps({"line": line, **texts, **truth, **result}))
    return analyze_records(records, options).document()


def pair_expectation(service: Service) -> dict:
    pairs = [{"text": p, "text_pair": h} for p, h, _ in PAIRS]
    options = AnalysisOptions(text_field="premise", pair_field="hypothesis")
    return folded(service, pairs, [g for _, _, g in PAIRS], options)


def zero_shot_expectation(service: Service) -> dict:
    return folded(
        service, TEXTS, [None] * len(TEXTS), AnalysisOptions(), candidate_labels=CANDIDATES, multi_label=True
    )


def assert_same_words(document: dict, expected: dict) -> None:
    """The global words and the cohorts (the rest names the input and the run)."""
    assert_same_analysis(document["explanations"], expected["explanations"])
    assert_same_analysis(document["clarion"]["cohorts"], expected["clarion"]["cohorts"])


def assert_pairs_kept_apart(document: dict) -> None:
    for label, entry in document["explanations"]["kernel_shap"].items():
        assert set(entry["global_top_shap_text"]) == {"premise", "hypothesis"}, label
        assert set(entry["global_shap_values"]) == {"premise", "hypothesis"}
        assert "music" in entry["global_top_shap_text"]["premise"]
        assert "music" in entry["global_top_shap_text"]["hypothesis"]
    top = document["clarion"]["cohorts"]["all"]["labels"]["entailment"]["top"]
    assert {(e["unit"], e["segment"]) for e in top} >= {
        ("music", 0),
        ("music", 1),
        ("guitar", 0),
        ("guitar", 1),
    }
    assert document["clarion"]["options"]["pair_field"] == "hypothesis"


def test_a_pair_analysis_runs_inline_and_keeps_the_two_texts_apart(nli: Service) -> None:
    response = post(nli, jsonl(ROWS), **PAIR_QUERY)
    assert response.status_code == 200, response.text
    analysis = response.json()
    assert analysis["status"] == "succeeded" and analysis["lines"] == 6 and analysis["texts"] == 5
    document = analysis["analysis"]
    assert document["clarion"]["texts"] == 5 and document["clarion"]["skipped"] == 1
    assert document["clarion"]["explanation_parameters"]["granularity"] == "word"
    assert_pairs_kept_apart(document)
    assert_same_words(document, pair_expectation(nli))
    # The report tags each unit with its text's field, and lists (not draws) the pairs it got wrong.
    page = nli.get(f"/analyses/{analysis['id']}", headers={"Accept": "text/html"})
    assert page.status_code == 200 and '<small class="feature">hypothesis</small>' in page.text

    # A CSV body: the second text from the pair_field column; an empty cell is that row's error.
    table = "premise,hypothesis,gold\n" + "".join(f'"{p}","{h}",{g}\n' for p, h, g in PAIRS) + "alone,,x\n"
    as_csv = post(nli, table.encode(), "text/csv", **PAIR_QUERY)
    assert as_csv.status_code == 200, as_csv.text
    assert as_csv.json()["analysis"]["clarion"]["skipped"] == 1
    assert_same_words(as_csv.json()["analysis"], document)


def test_a_zero_shot_analysis_runs_inline_with_the_words_per_candidate_label(nli: Service) -> None:
    response = post(nli, jsonl([{"text": t} for t in TEXTS]), **ZERO_SHOT_QUERY)
    assert response.status_code == 200, response.text
    document = response.json()["analysis"]
    assert list(document["explanations"]["kernel_shap"]) == CANDIDATES
    assert document["clarion"]["labels"] == CANDIDATES
    assert document["clarion"]["zero_shot"] == {
        "candidate_labels": CANDIDATES, "hypothesis_template": "This example is {}.", "multi_label": True
    }  # fmt: skip
    assert_same_words(document, zero_shot_expectation(nli))


def test_the_client_analyzes_pairs_and_zero_shot_labels(nli: Service) -> None:
    from clarion_client import Clarion  # its AnalysisOptions go out as the query parameters

    client = Clarion(nli.url)
    pairs = client.analyze(
        ROWS, max_evals=40, text_field="premise", pair_field="hypothesis", label_field="gold"
    )
    assert pairs.analysis["clarion"]["skipped"] == 1
    assert_same_words(pairs.analysis, pair_expectation(nli))
    zero_shot = client.analyze(
        [{"text": t} for t in TEXTS], max_evals=40, candidate_labels=CANDIDATES, multi_label=True
    )
    assert_same_words(zero_shot.analysis, zero_shot_expectation(nli))


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ({**PAIR_QUERY, "precision": "amortized"}, "amortized"),
        ({**PAIR_QUERY, "faithfulness": "true"}, "faithfulness"),
        ({**PAIR_QUERY, "long_text": "windows"}, "windows"),
        ({**PAIR_QUERY, "pair_field": "premise"}, "text's own"),
        ({**PAIR_QUERY, "pair_field": ""}, "pair_field: empty"),
        ({**PAIR_QUERY, "candidate_labels": "a,b"}, "not both"),
        ({**ZERO_SHOT_QUERY, "faithfulness": "true"}, "faithfulness"),
        ({**ZERO_SHOT_QUERY, "long_text": "windows"}, "windows"),
        ({**ZERO_SHOT_QUERY, "labels": "entailment"}, "unknown label"),
        ({**ZERO_SHOT_QUERY, "candidate_labels": "a, a"}, "each label once"),
        ({**ZERO_SHOT_QUERY, "candidate_labels": ","}, "candidate_labels"),
        ({**ZERO_SHOT_QUERY, "hypothesis_template": "no slot"}, "hypothesis_template"),
        ({**ZERO_SHOT_QUERY, "multi_label": "maybe"}, "multi_label"),
        ({"hypothesis_template": "It is {}."}, "go with candidate_labels"),
    ],
)
def test_what_pairs_and_zero_shot_cannot_take_is_a_400_at_submit(
    nli: Service, query: dict, words: str
) -> None:
    response = post(nli, jsonl(ROWS), **query)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]["message"]


def test_zero_shot_analyses_need_an_nli_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"MODEL_DIR": str(tiny_model_dir), "SERVERLESS": "true", "TORCH_THREADS": "1"}
    with running_service(tmp_path, env) as service:
        wait_healthy(service)
        response = post(service, jsonl([{"text": t} for t in TEXTS]), candidate_labels="sports")
        assert response.status_code == 400 and "entailment label" in response.json()["error"]["message"]
        parameters = service.get("/openapi.json").json()["paths"]["/analyses"]["post"]["parameters"]
        assert "pair_field" in {p["name"] for p in parameters}
        assert "candidate_labels" not in {p["name"] for p in parameters}  # offered to NLI models only


def test_pair_and_zero_shot_analyses_run_on_a_worker(tiny_nli_dir: Path, tmp_path: Path) -> None:
    """A real Redis and Celery worker: each analysis in chunks of two texts, equal to the fold of
    the API's own answers for the same records."""
    env = {
        "MODEL_DIR": str(tiny_nli_dir),
        "WORKER_CONCURRENCY": "1",
        "TORCH_THREADS": "1",
        "ANALYSIS_CHUNK_TEXTS": "2",
    }
    with job_stack(tmp_path, env) as stack:
        api = stack.api
        submitted = {
            "pairs": post(api, jsonl(ROWS), **PAIR_QUERY),
            "zero-shot": post(api, jsonl([{"text": t} for t in TEXTS]), **ZERO_SHOT_QUERY),
        }
        documents = {}
        for name, response in submitted.items():
            assert response.status_code == 202, response.text
            analysis: dict = {}

            def finished(path: str = response.headers["Location"], analysis: dict = analysis) -> bool:
                analysis.update(api.get(path).json())
                return analysis["status"] in {"succeeded", "failed", "cancelled"}

            wait_until(finished, 240, what=f"the {name} analysis to finish")
            assert analysis["status"] == "succeeded", analysis
            documents[name] = analysis["analysis"]
        assert documents["pairs"]["clarion"]["skipped"] == 1
        assert_pairs_kept_apart(documents["pairs"])
        assert_same_words(documents["pairs"], pair_expectation(api))
        assert list(documents["zero-shot"]["explanations"]["kernel_shap"]) == CANDIDATES
        assert_same_words(documents["zero-shot"], zero_shot_expectation(api))


def test_clarion_analyze_reads_a_pair_field(nli: Service, tiny_nli_dir: Path, tmp_path: Path) -> None:
    """`clarion analyze --pair-field`: the same analysis as POST /analyses of the same records; what
    pairs cannot take stops the run before any work."""
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(jsonl(ROWS))
    common = ("--text-field", "premise", "--pair-field", "hypothesis", "--label-field", "gold")
    env = {"MODEL_DIR": str(tiny_nli_dir), "TORCH_THREADS": "1"}
    out = tmp_path / "analysis"
    run = run_cli("analyze", str(source), "--out", str(out), *common, "--max-evals", "40", timeout=300, **env)
    assert run.returncode == 0, run.stderr
    document = json.loads((out / "analysis.json").read_text())
    assert document["clarion"]["skipped"] == 1
    assert document["clarion"]["cohorts"]["all"]["faithfulness"] is None  # not measured on pairs
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [r["text_pair"] for r in records if "error" not in r] == [h for _, h, _ in PAIRS]
    assert_pairs_kept_apart(document)
    assert_same_words(document, pair_expectation(nli))
    refused = run_cli(
        "analyze", str(source), "--out", str(tmp_path / "r"), *common, "--precision", "amortized", **env
    )
    assert refused.returncode == 2 and "amortized" in refused.stderr


def test_clarion_analyze_takes_candidate_labels(nli: Service, tiny_nli_dir: Path, tmp_path: Path) -> None:
    """`clarion analyze --candidate-labels --multi-label`: the global words per candidate label, as
    POST /analyses folds them; zero-shot options without labels, or beside a pair field, stop the
    run before any work."""
    source = tmp_path / "texts.jsonl"
    source.write_bytes(jsonl([{"text": t} for t in TEXTS]))
    env = {"MODEL_DIR": str(tiny_nli_dir), "TORCH_THREADS": "1"}
    out = tmp_path / "analysis"
    labels = ("--candidate-labels", " sports, politics,music", "--multi-label", "--max-evals", "40")
    run = run_cli("analyze", str(source), "--out", str(out), *labels, timeout=300, **env)
    assert run.returncode == 0, run.stderr
    document = json.loads((out / "analysis.json").read_text())
    assert list(document["explanations"]["kernel_shap"]) == CANDIDATES
    assert document["clarion"]["zero_shot"] == {
        "candidate_labels": CANDIDATES,
        "hypothesis_template": "This example is {}.",
        "multi_label": True,
    }
    assert_same_words(document, zero_shot_expectation(nli))
    for wrong in (
        ("--hypothesis-template", "It is {}."),
        ("--multi-label",),
        ("--candidate-labels", "a,b", "--pair-field", "hypothesis"),
    ):
        refused = run_cli("analyze", str(source), "--out", str(tmp_path / "r"), *wrong, **env)
        assert refused.returncode == 2 and "--candidate-labels" in refused.stderr, refused.stderr


def test_clarion_compare_names_each_units_text_in_pair_analyses(
    nli: Service, tiny_nli_dir: Path, tmp_path: Path
) -> None:
    """Two pair analyses compare with the units of both texts, each named with its text."""
    source = tmp_path / "pairs.jsonl"
    source.write_bytes(jsonl(ROWS))
    env = {"MODEL_DIR": str(tiny_nli_dir), "TORCH_THREADS": "1"}
    common = ("--text-field", "premise", "--pair-field", "hypothesis", "--max-evals", "40")
    for name, rows in (("before", ROWS), ("after", ROWS[::-1][:3])):
        source.write_bytes(jsonl(rows))
        run = run_cli("analyze", str(source), "--out", str(tmp_path / name), *common, timeout=300, **env)
        assert run.returncode == 0, run.stderr
    drift = tmp_path / "drift.json"
    compared = run_cli("compare", str(tmp_path / "before"), str(tmp_path / "after"), "--json", str(drift))
    assert compared.returncode in (0, 1), compared.stderr
    comparison = json.loads(drift.read_text())
    assert comparison["text_features"] == ["premise", "hypothesis"]
    moved = [m for entry in comparison["labels"].values() for m in entry["moved"]]
    assert {m["segment"] for m in moved} == {0, 1}
    assert any(line.count("premise:") or line.count("hypothesis:") for line in compared.stdout.splitlines())
