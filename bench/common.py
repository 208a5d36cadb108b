"""Shared bench helpers: paths, SST-2 sentences, timing, medians, tables, results files, a model builder."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The team kit beside the checkout; CLARION_TEAM_KIT points elsewhere (a GPU machine gets a copy).
TEAM_KIT = Path(os.environ.get("CLARION_TEAM_KIT") or REPO.parent / "shared")
MINILM_DIR = TEAM_KIT / "models" / "minilm-sst2"
SST2_PATH = TEAM_KIT / "data" / "sst2-dev.tsv"
DEFAULT_OUT = REPO / "bench" / "results"


def quiet_transformers() -> None:
    """No warnings or progress bars from transformers, and no tokenizer fork warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def sst2_sentences(limit: int | None = None, path: Path = SST2_PATH) -> list[str]:
    """SST-2 dev sentences in file order (the file is a header line, then `label<TAB>sentence`)."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    sentences = [line.split("\t", 1)[1] for line in lines if "\t" in line]
    return sentences if limit is None else sentences[:limit]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run `fn` once; return its result and the seconds it took."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` runs of `fn`, in seconds."""
    return min(timed(fn)[1] for _ in range(repeats))


def median(values: Sequence[float | None]) -> float | None:
    """Median of the values that are not None (None when there are none)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    """Format a number for a table, or "-" when it is missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec) + suffix
    return f"{value}{suffix}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table with right-aligned columns."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_results(out_dir: Path, name: str, data: dict[str, Any], text: str) -> Path:
    """Write `<name>.json` and `<name>.txt` under `out_dir`, print the text, return the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out_dir / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    return json_path


def build_random_distilbert(directory: Path, tokenizer_dir: Path = MINILM_DIR, seed: int = 0) -> Path:
    """Save a DistilBERT-base-size binary classifier with random weights and minilm's tokenizer.

    Its outputs mean nothing; it exists to time a model of DistilBERT's size without downloading one.
    """
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        n_layers=6,
        dim=768,
        hidden_dim=3072,
        n_heads=12,
        num_labels=2,
        id2label=labels,
        label2id={label: i for i, label in labels.items()},
    )
    torch.manual_seed(seed)
    DistilBertForSequenceClassification(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rss_by_process(groups: list[int]) -> dict[str, float]:
    """RSS (MiB) of every process in the given process groups, by "pid name"."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getpgid(int(entry)) not in groups:
                continue
            status = Path(f"/proc/{entry}/status").read_text()
        except (OSError, ProcessLookupError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss_kib = int(fields.get("VmRSS", "0 kB").split()[0])
        if rss_kib:
            out[f"{entry} {fields.get('Name', '?').strip()}"] = rss_kib / 1024
    return out


def service_env(smoke: bool) -> dict[str, str]:
    """What the benchmarks that time exact work over services and workers add to their environment.

    FAST_BACKEND=exact: none of them asks for "fast", and a service would otherwise measure fast's
    candidates in the background for its first minute or so (an int8 graph, then timed passes),
    on the very cores the benchmark is timing.

    With --smoke, the MODEL_CACHE_DIR it was itself given, if any (the service smoke tests give
    theirs one, so that the model's ONNX export is made by the first service and reused by the
    rest, as a deployment's cache serves its later processes). A full run's processes share a fresh
    cache of their own, as before."""
    cache = os.environ.get("MODEL_CACHE_DIR")
    return {"FAST_BACKEND": "exact"} | ({"MODEL_CACHE_DIR": cache} if smoke and cache else {})


def settled_service(model_dir: str, tmp: Path, threads: int, smoke: bool) -> Any:
    """A single-process ClarionService as the API runs one (no cache, its own model cache under
    `tmp`; with `smoke`, a tiny random model instead of `model_dir`), once its backends have
    settled: exact's graph attached (or not) and fast's path chosen, so that nothing is measured on
    torch in the seconds before the switch."""
    from shared.serving.service import ClarionService
    from shared.settings import Settings

    if smoke:
        from tests.support import build_tiny_model

        model_dir = str(build_tiny_model(tmp / "tiny", labels=["negative", "positive"]))
    settings = Settings(
        model_dir=model_dir,
        torch_threads=threads,
        serverless=True,
        explanation_cache_size=0,
        model_cache_dir=str(tmp / "cache"),
    )
    service = ClarionService(settings, threads=threads)
    service.load()
    while service.fast_choice.status == "measuring":  # chosen after exact's graph attaches
        time.sleep(0.2)
    return service
