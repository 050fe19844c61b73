"""OpenAI Batch API: send every unit request of a run as one batch (half price, 24 h window).

The flow: collect the exact requests the :class:`~quallm.coding.extract.Extractor` would send (one per turn
or chunk), write them as Batch JSONL with ``custom_id = request.key()``, upload, create the batch and
save ``batch.json`` in the run directory (so a later command can resume polling, or collect), poll,
download the output and error files into the run directory, then run the ordinary
:func:`~quallm.run.runner.run_extraction` with :class:`BatchAnswersModel`: unit requests are answered from
the batch by key, and everything else (re-asks, summaries, lines that failed in the batch) goes to the
fallback model as normal requests. Validation, grounding and the run directory are therefore exactly
as in a normal run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from quallm.coding.extract import ExtractOptions, Extractor, fingerprint, plan_packs
from quallm.core.codebook import Codebook
from quallm.core.errors import ConfigError, NetworkDisabledError, TransportError
from quallm.core.redact import redact
from quallm.core.transcript import Transcript
from quallm.ingest.chunking import Chunk, Segment
from quallm.ingest.transcripts import InputOptions, load_metadata
from quallm.models.base import ChatModel, ChatRequest, Completion, ModelWrapper, Usage
from quallm.models.openai_compat import chat_body
from quallm.run.batch import BatchInputs
from quallm.run.rundir import RunDir, atomic_write_text, locked, now_iso
from quallm.run.runner import Progress, RunReport, run_extraction

if TYPE_CHECKING:
    from quallm.models.openai_compat import OpenAICompatModel

BATCH_FILE = "batch.json"
CHAT_URL = "/v1/chat/completions"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


# --- requests -------------------------------------------------------------------------------------


def unit_requests(extractor: Extractor, transcript: Transcript) -> list[tuple[str, ChatRequest]]:
    """(unit name, request) for every unit of ``transcript``, built by the extractor's own code path."""
    out = []
    for name, thunk in extractor.units(transcript):
        # units() returns partials of code_turn(transcript, seg) / code_chunk(transcript, chunk); reading
        # the target back keeps these requests identical to what extraction sends.
        target = thunk.args[-1] if isinstance(thunk, partial) and thunk.args else None
        if isinstance(target, Chunk):
            out.append((name, extractor.chunk_request(target)))
        elif isinstance(target, Segment):
            out.append((name, extractor.turn_request(transcript, target)))
        else:
            raise ConfigError(f"cannot read the request of unit {name!r} (Extractor.units changed shape)")
    return out


def job_requests(extractor: Extractor, transcripts: Sequence[Transcript]) -> list[tuple[list[str], ChatRequest]]:
    """(transcript ids, request) for every coding request of a batch as the runner sends it, packs included."""
    out: list[tuple[list[str], ChatRequest]] = []
    for pack in plan_packs([extractor.pack_size(t) for t in transcripts], extractor.options.chunk_tokens):
        group = [transcripts[i] for i in pack]
        if len(group) > 1:
            out.append(([t.id for t in group], extractor.pack_request([(t, extractor.chunks(t)[0]) for t in group])))
        else:
            out.extend(([group[0].id], r) for _, r in unit_requests(extractor, group[0]))
    return out


def collect_unit_requests(extractor: Extractor, transcripts: Sequence[Transcript]) -> list[ChatRequest]:
    """Every unit request of ``transcripts``, once each (identical requests share a key)."""
    seen: dict[str, ChatRequest] = {}
    for t in transcripts:
        for _, req in unit_requests(extractor, t):
            seen.setdefault(req.key(), req)
    return list(seen.values())


def to_batch_jsonl(requests: Sequence[ChatRequest]) -> bytes:
    """Batch API input: one ``{"custom_id": key, "method", "url", "body"}`` line per distinct request."""
    lines: dict[str, str] = {}
    for r in requests:
        line = {"custom_id": r.key(), "method": "POST", "url": CHAT_URL, "body": chat_body(r)}
        lines.setdefault(r.key(), json.dumps(line, ensure_ascii=False, separators=(",", ":")))
    return "".join(x + "\n" for x in lines.values()).encode("utf-8")


# --- the batch on the server ----------------------------------------------------------------------


class BatchInfo(BaseModel):
    """What ``batch.json`` in the run directory records about the batch."""

    batch_id: str
    input_file_id: str
    status: str
    model: str
    endpoint: str
    n_requests: int
    submitted: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    request_counts: dict[str, int] = Field(default_factory=dict)
    polls: int = 0
    collected: bool = False

    def save(self, run_dir: Path) -> None:
        """Write ``batch.json`` atomically."""
        atomic_write_text(run_dir / BATCH_FILE, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: Path) -> BatchInfo | None:
        """The run's ``batch.json``, or None."""
        p = run_dir / BATCH_FILE
        if not p.is_file():
            return None
        try:
            return cls.model_validate_json(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ConfigError(f"{p}: not a valid batch record ({exc})") from exc


def _client(model: OpenAICompatModel) -> Any:
    from quallm.models import openai_compat

    host = model.endpoint.split("/")[0].rsplit(":", 1)[0]
    if not openai_compat.ALLOW_MODEL_REQUESTS and host not in openai_compat._LOCAL_HOSTS:
        raise NetworkDisabledError("remote model requests are disabled (quallm.models.openai_compat)")
    return model._client  # the backend's configured SDK client (base URL, key, timeout; no SDK retries)


def _api_call(model: OpenAICompatModel, what: str, fn: Callable[[], Any]) -> Any:
    import openai

    try:
        return fn()
    except openai.APIStatusError as exc:
        raise TransportError(f"{model.endpoint}: {what} answered HTTP {exc.status_code}: {exc}") from exc
    except (openai.APIConnectionError, openai.APITimeoutError) as exc:
        raise TransportError(f"{model.endpoint}: {what} failed: {type(exc).__name__}") from exc


def submit_batch(client_model: OpenAICompatModel, requests: Sequence[ChatRequest], run_dir: str | Path) -> BatchInfo:
    """Upload the requests as a JSONL file, create a batch, and save ``batch.json`` in ``run_dir``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    data = to_batch_jsonl(requests)
    client = _client(client_model)
    f = _api_call(
        client_model, "file upload", lambda: client.files.create(file=("quallm-batch.jsonl", data), purpose="batch")
    )
    b = _api_call(
        client_model,
        "batch create",
        lambda: client.batches.create(
            input_file_id=f.id, endpoint=CHAT_URL, completion_window="24h", metadata={"created_by": "quallm"}
        ),
    )
    info = BatchInfo(
        batch_id=b.id,
        input_file_id=f.id,
        status=b.status,
        model=client_model.name,
        endpoint=client_model.endpoint,
        n_requests=data.count(b"\n"),
        submitted=now_iso(),
    )
    info.save(run)
    return info


def poll_batch(
    client_model: OpenAICompatModel,
    info: BatchInfo,
    run_dir: str | Path,
    *,
    interval: float = 30.0,
    timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[BatchInfo], None] | None = None,
) -> BatchInfo:
    """Retrieve the batch until it ends (or ``timeout`` seconds pass; 0 = look once); saves each state.

    A transport failure while polling is not fatal: the batch lives on the server, so the next poll
    (or a later command) simply looks again.
    """
    client = _client(client_model)
    retrieve = partial(client.batches.retrieve, info.batch_id)
    t0 = time.monotonic()
    while True:
        try:
            b = _api_call(client_model, "batch retrieve", retrieve)
        except TransportError:
            b = None
        if b is not None:
            counts = getattr(b, "request_counts", None)
            info = info.model_copy(
                update={
                    "status": b.status,
                    "output_file_id": b.output_file_id,
                    "error_file_id": b.error_file_id,
                    "request_counts": counts.model_dump() if counts is not None else {},
                    "polls": info.polls + 1,
                }
            )
            info.save(Path(run_dir))
            if on_poll:
                on_poll(info)
            if info.status in TERMINAL:
                return info
        if timeout is not None and time.monotonic() - t0 + interval > timeout:
            return info
        sleep(interval)


def _output_path(run: Path, info: BatchInfo, kind: str) -> Path:
    return run / f"batch_{kind}-{info.batch_id}.jsonl"


def _completion_of(line: dict[str, Any]) -> Completion | None:
    resp = line.get("response") or {}
    if line.get("error") or resp.get("status_code") != 200:
        return None
    body = resp.get("body") or {}
    choice = (body.get("choices") or [{}])[0]
    usage = body.get("usage") or {}
    return Completion(
        content=(choice.get("message") or {}).get("content") or "",
        finish_reason=choice.get("finish_reason") or "stop",
        usage=Usage(
            prompt_tokens=usage.get("prompt_tokens", 0) or 0, completion_tokens=usage.get("completion_tokens", 0) or 0
        ),
        model=body.get("model") or "",
    )


def _line_error(line: dict[str, Any]) -> str:
    err = line.get("error") or ((line.get("response") or {}).get("body") or {}).get("error") or {}
    status = (line.get("response") or {}).get("status_code")
    return f"HTTP {status}: {err.get('message', err) if isinstance(err, dict) else err}"


def download_results(client_model: OpenAICompatModel, info: BatchInfo, run_dir: str | Path) -> dict[str, Completion]:
    """The batch's answers by request key; output and error files are kept in ``run_dir``.

    Lines that failed (non-200 or an error) are not answers: they are listed in
    ``batch_errors-<id>.jsonl`` (see :func:`batch_errors`) and get asked again as normal requests.
    """
    run = Path(run_dir)
    for kind, file_id in (("output", info.output_file_id), ("errors", info.error_file_id)):
        path = _output_path(run, info, kind)
        if file_id and not path.is_file():
            client = _client(client_model)
            content = _api_call(client_model, "file download", partial(client.files.content, file_id))
            atomic_write_text(path, redact(content.content.decode("utf-8")))  # a line may echo the key
    return read_answers(run)


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue  # a torn line: that request is simply asked again
    return out


def read_answers(run_dir: str | Path) -> dict[str, Completion]:
    """Answers of every batch downloaded into ``run_dir`` (earlier batches included), by request key."""
    answers: dict[str, Completion] = {}
    for path in sorted(Path(run_dir).glob("batch_output-*.jsonl")):
        for line in _lines(path):
            c = _completion_of(line)
            if c is not None and line.get("custom_id"):
                answers[str(line["custom_id"])] = c
    return answers


def batch_errors(run_dir: str | Path) -> dict[str, str]:
    """Request key -> error, for every failed line of every batch downloaded into ``run_dir``."""
    errors: dict[str, str] = {}
    for path in sorted(Path(run_dir).glob("batch_*-*.jsonl")):
        for line in _lines(path):
            if _completion_of(line) is None and line.get("custom_id"):
                errors[str(line["custom_id"])] = _line_error(line)
    answered = read_answers(run_dir)  # a line that failed once may have been answered by a later batch
    return {k: v for k, v in errors.items() if k not in answered}


# --- answering from the batch ---------------------------------------------------------------------


class BatchAnswersModel(ModelWrapper):
    """A ChatModel that answers from batch results by request key, and sends anything else to ``fallback``."""

    def __init__(self, answers: dict[str, Completion], fallback: ChatModel) -> None:
        super().__init__(fallback)  # the batch ran the same model, so identity and tokenizer are the fallback's
        self.answers = answers
        self.fallback = fallback
        self.from_batch = 0
        self.forwarded = 0
        self._lock = threading.Lock()

    def complete(self, request: ChatRequest) -> Completion:
        """The batch's answer for exactly this request, else a normal request to the fallback."""
        answer = self.answers.get(request.key())
        with self._lock:
            if answer is not None:
                self.from_batch += 1
            else:
                self.forwarded += 1
        return answer if answer is not None else self.fallback.complete(request)


# --- a whole run ----------------------------------------------------------------------------------


@dataclass
class BatchRunResult:
    """What :func:`run_batch_extraction` did: ``status`` is "finished" or "pending" (run again later)."""

    status: str
    batch: BatchInfo | None
    report: RunReport | None
    from_batch: int = 0  # requests answered from batch output
    sent_directly: int = 0  # summaries, re-asks and failed lines, sent to the fallback
    failed_lines: int = 0  # batch lines that failed (kept in batch_errors-<id>.jsonl)


def _pending_transcripts(
    inputs: Sequence[str | Path],
    codebook: Codebook,
    model: ChatModel,
    run: RunDir,
    options: ExtractOptions,
    metadata_path: str | Path | None,
    input_options: InputOptions | None = None,
) -> list[Transcript]:
    metadata = load_metadata(metadata_path) if metadata_path else {}
    # Read silently: run_extraction reports unreadable files and warnings when the answers are in.
    inputs_read = BatchInputs(None, inputs, input_options).read(metadata=metadata)
    return [t for _, t, _ in inputs_read if run.finished_result(t.id, fingerprint(t, codebook, model, options)) is None]


def run_batch_extraction(
    inputs: Sequence[str | Path],
    codebook: Codebook,
    model: OpenAICompatModel,
    out: str | Path,
    *,
    options: ExtractOptions | None = None,
    fallback: ChatModel | None = None,
    wait: bool = True,
    poll_interval: float = 30.0,
    poll_timeout: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    on_poll: Callable[[BatchInfo], None] | None = None,
    metadata_path: str | Path | None = None,
    codebook_path: str | Path | None = None,
    model_info: dict[str, Any] | None = None,
    progress: Progress | None = None,
    input_options: InputOptions | None = None,
) -> BatchRunResult:
    """Code ``inputs`` with the unit requests sent as one Batch API job, resumably.

    With no pending batch in ``out``: collects the unit requests of unfinished transcripts (minus any
    already answered by an earlier batch), submits them and records ``batch.json``. With one: polls
    it. ``wait=False`` looks once and returns "pending" unless the batch is done; a later call
    collects. Once done, the results are downloaded and :func:`run_extraction` runs with
    :class:`BatchAnswersModel` (``fallback``, default ``model``, answers the rest).
    """
    # No packing: each batch line is one transcript's chunk, so the lines and the pipeline's requests
    # match one to one (the Batch API's discount already halves the price).
    opts = (options or ExtractOptions()).model_copy(update={"pack": False})
    with locked(out):
        return _run_batch_extraction(
            inputs,
            codebook,
            model,
            out,
            opts,
            fallback=fallback,
            wait=wait,
            poll_interval=poll_interval,
            poll_timeout=poll_timeout,
            sleep=sleep,
            on_poll=on_poll,
            metadata_path=metadata_path,
            codebook_path=codebook_path,
            model_info=model_info,
            progress=progress,
            input_options=input_options,
        )


def _run_batch_extraction(
    inputs: Sequence[str | Path],
    codebook: Codebook,
    model: OpenAICompatModel,
    out: str | Path,
    opts: ExtractOptions,
    *,
    fallback: ChatModel | None,
    wait: bool,
    poll_interval: float,
    poll_timeout: float | None,
    sleep: Callable[[float], None],
    on_poll: Callable[[BatchInfo], None] | None,
    metadata_path: str | Path | None,
    codebook_path: str | Path | None,
    model_info: dict[str, Any] | None,
    progress: Progress | None,
    input_options: InputOptions | None,
) -> BatchRunResult:
    run = RunDir(out)
    run.prepare()
    info = BatchInfo.load(run.path)
    if info is not None and info.collected:
        info = None  # that batch is done and its answers are on disk; submit afresh for what is left
    if info is not None and (info.model, info.endpoint) != (model.name, model.endpoint):
        raise ConfigError(
            f"{run.path / BATCH_FILE}: the pending batch is for {info.model} at {info.endpoint}, "
            f"not {model.name} at {model.endpoint}"
        )
    if info is None:
        pending = _pending_transcripts(inputs, codebook, model, run, opts, metadata_path, input_options)
        done = read_answers(run.path)
        requests = [r for r in collect_unit_requests(Extractor(model, codebook, opts), pending) if r.key() not in done]
        if requests:
            info = submit_batch(model, requests, run.path)
    if info is not None and info.status not in TERMINAL:
        timeout = poll_timeout if wait else 0.0
        info = poll_batch(model, info, run.path, interval=poll_interval, timeout=timeout, sleep=sleep, on_poll=on_poll)
        if info.status not in TERMINAL:
            return BatchRunResult(status="pending", batch=info, report=None)
    if info is not None:
        download_results(model, info, run.path)
        info = info.model_copy(update={"collected": True})
        info.save(run.path)
    answers = read_answers(run.path)
    answering = BatchAnswersModel(answers, fallback or model)
    batch_facts = {"batch": info.model_dump(mode="json") if info else None, "batch_answers": len(answers)}
    report = run_extraction(
        inputs,
        codebook,
        answering,
        out,
        options=opts,
        metadata_path=metadata_path,
        codebook_path=codebook_path,
        model_info={**(model_info or {}), **batch_facts},
        progress=progress,
        input_options=input_options,
    )
    return BatchRunResult(
        status="finished",
        batch=info,
        report=report,
        from_batch=answering.from_batch,
        sent_directly=answering.forwarded,
        failed_lines=len(batch_errors(run.path)),
    )
