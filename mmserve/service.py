"""The inference service: the one path from a GenerationRequest to text, used by every API."""

from __future__ import annotations

import logging
import threading
import time

import psutil
import torch
from transformers import StoppingCriteriaList

from .batching import BatchedRun, batcher_for
from .errors import BadRequest, ModelLoadFailed, OutOfMemory, is_oom
from .families.rules import check_media, prepare_inputs
from .generation import CancelOnEvent, StopText, StreamRun, sampling_kwargs, trim_completion
from .limits import check_prompt, prompt_param
from .types import GenerationRequest, GenerationResult

log = logging.getLogger("mmserve.service")


def _is_cuda_oom(exc: BaseException) -> bool:
    """GPU memory ran out (not host RAM: a MemoryError is not helped by the CPU)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "cuda out of memory" in str(exc).lower()


class InferenceService:
    """Checks a request against its model, leases the model, runs the family handler."""

    def __init__(self, manager, settings, hooks=None):
        self.manager = manager
        self.settings = settings
        self.hooks = hooks
        self._batch_lock = threading.Lock()  # makes each model's batcher once
        self._posts = 0  # HTTP POSTs being handled now (mmserve.http counts them)
        self._posts_lock = threading.Lock()

    def post_started(self) -> None:
        with self._posts_lock:
            self._posts += 1

    def post_ended(self) -> None:
        with self._posts_lock:
            self._posts -= 1

    # --- checks done before any model is touched ---------------------------
    def check(self, req: GenerationRequest):
        spec = self.manager.spec(req.model)
        from .families import get_handler

        handler = get_handler(spec.family)
        if not handler.generates:
            raise BadRequest(f"model '{spec.name}' is an embedding model", param="model")
        for part in req.media_parts():
            if part.type not in spec.capabilities:
                raise BadRequest(
                    f"model '{spec.name}' does not accept {part.type} input "
                    f"(it takes {', '.join(spec.capabilities)})",
                    param=part.field,
                )
        if not any(m.parts for m in req.messages):
            raise BadRequest("the request holds no input", param="prompt")
        mx = req.params.max_new_tokens
        if mx is not None and mx > self.settings.max_new_tokens_limit:
            raise BadRequest(
                f"max tokens is over the limit max_new_tokens_limit="
                f"{self.settings.max_new_tokens_limit}",
                param="max_tokens",
                code="limit_exceeded",
            )
        handler.check_request(spec, req)
        check_media(req, handler.media_rules(spec, spec.path(self.settings.models_dir)))
        return spec

    def _prepare(self, lm, req: GenerationRequest):
        prepared = prepare_inputs(lm, req)
        kwargs = sampling_kwargs(lm.spec.generation, req.params, self.settings.max_new_tokens_limit)
        kwargs["max_new_tokens"] = check_prompt(
            prepared.prompt_tokens,
            req.params.max_new_tokens,
            kwargs["max_new_tokens"],
            lm.context,
            self.settings.max_prompt_tokens,
            prompt_param(req),
            lm.handler.completion_in_context,
        )
        if req.params.stop:
            kwargs["stop_strings"] = list(req.params.stop)
            kwargs["tokenizer"] = lm.tokenizer
        if req.params.seed is not None:
            torch.manual_seed(int(req.params.seed))
        return prepared, kwargs

    def _result(self, lm, req, prepared, text, completion, started, first_at, extras=None):
        extras = extras or {}
        spec = lm.spec
        result = GenerationResult(
            text=text,
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=len(completion.ids),
            finish_reason=completion.finish_reason,
            model=spec.name,
            model_type=spec.family,
            generation_method=extras.pop("generation_method", lm.plan.device),
            memory_optimized=spec.quantization is not None,
            audio_wav_base64=extras.get("audio_wav_base64"),
            seconds=time.monotonic() - started,
            first_token_seconds=(first_at - started) if first_at else None,
        )
        if self.hooks is not None:
            self.hooks.on_generation(result)
        return result

    # --- generation ---------------------------------------------------------
    def generate(self, req: GenerationRequest) -> GenerationResult:
        """Generate the whole answer; out-of-memory frees idle models and retries once."""
        self.check(req)
        started = time.monotonic()
        with self.manager.lease(req.model, req.keep_alive) as lease:
            lm = lease.model
            method = None  # "cpu_fallback" once the request runs on a CPU copy
            for attempt in (1, 2, 3):
                try:
                    prepared, kwargs = self._prepare(lm, req)
                    batcher = None
                    if method is None:  # a CPU fallback copy is this request's alone
                        batcher = self._batcher(lm)
                    if batcher is not None:
                        cancel = threading.Event()
                        ids = batcher.submit(prepared, kwargs, cancel, req.params.seed).result()
                    else:
                        sequences = lm.handler.generate(lm, prepared, kwargs)
                        ids = lm.handler.completion_ids(lm, prepared, sequences)
                    break
                except Exception as exc:
                    if not is_oom(exc):
                        raise
                    if attempt == 2 and self._may_fall_back(lm, exc):
                        lm, method = self._cpu_copy(lm), "cpu_fallback"
                        continue
                    if attempt >= 2:
                        raise OutOfMemory(
                            f"out of memory running model '{req.model}'; try a shorter request"
                        ) from exc
                    log.warning("out of memory in %s; freeing memory and retrying", req.model)
                    self.manager.free_memory(exclude=req.model)
            completion = trim_completion(lm, ids, kwargs["max_new_tokens"], cancelled=False)
            text = lm.tokenizer.decode(completion.ids, skip_special_tokens=True)
            if req.params.stop:
                cut = StopText(req.params.stop)
                text = cut.feed(text) + cut.flush()
                if cut.stopped:
                    completion.finish_reason = "stop"
            extras = lm.handler.extras(lm, prepared, req)
            if method:
                extras["generation_method"] = method
            return self._result(lm, req, prepared, text, completion, started, None, extras)

    # --- CPU fallback: step 2 after a second CUDA out-of-memory ----------------------
    def _may_fall_back(self, lm, exc: BaseException) -> bool:
        """Whether a request that ran out of GPU memory twice may run on the CPU instead."""
        return (
            self.settings.allow_cpu_fallback
            and getattr(lm.handler, "cpu_fallback", False)
            and lm.spec.quantization is None
            and _is_cuda_oom(exc)
        )

    def _cpu_copy(self, lm):
        """A float32 CPU copy of the leased model, for this one request.

        The lease on the GPU model is kept (so it is neither evicted nor reloaded under
        other requests, and their state is untouched); the copy is dropped with the request.
        """
        from .loader import DevicePlan, load_model
        from .memory import GB, estimate_model_bytes

        path = lm.spec.path(self.settings.models_dir)
        need = estimate_model_bytes(path, "float32", None)
        free = psutil.virtual_memory().available
        if need > free:
            raise OutOfMemory(
                f"out of GPU memory running model '{lm.spec.name}', and its CPU fallback needs "
                f"about {need / GB:.1f} GB of RAM ({free / GB:.1f} GB free)"
            )
        log.warning("out of GPU memory again in %s; running the request on the CPU", lm.spec.name)
        try:
            return load_model(lm.spec, path, DevicePlan("cpu", torch.float32), lm.handler)
        except Exception as exc:
            if is_oom(exc):
                raise OutOfMemory(
                    f"not enough memory to run model '{lm.spec.name}' on the CPU"
                ) from exc
            raise ModelLoadFailed(
                f"model '{lm.spec.name}' could not be loaded on the CPU for a fallback",
                details=type(exc).__name__,
            ) from exc

    def stream(self, req: GenerationRequest):
        """Start a streamed generation. Checks and the model lease happen now, before any
        byte is sent, so their errors get a proper status; the returned iterator yields
        text deltas and finally the GenerationResult. Closing the iterator stops the model.
        """
        self.check(req)
        started = time.monotonic()
        lease = self.manager.acquire(req.model, req.keep_alive)
        try:
            lm = lease.model
            prepared, kwargs = self._prepare(lm, req)
        except BaseException:
            lease.release()
            raise
        cancel = threading.Event()
        criteria = StoppingCriteriaList([CancelOnEvent(cancel)])
        kwargs["stopping_criteria"] = criteria
        run = self._stream_run(lm, req, prepared, kwargs, cancel)
        return Stream(
            self._stream_iter(lease, lm, req, prepared, kwargs, run, started, criteria), lease
        )

    def _batcher(self, lm):
        """The model's batcher (None where it does not batch).

        It asks how many requests may be on their way to the model, so that a lone request
        need not wait for company: those holding the model, or every POST the server is
        handling (one being parsed has no model yet), whichever is more.
        """
        name = lm.spec.name

        def holders() -> int:
            return max(self.manager.holders(name), self._posts)

        return batcher_for(lm, self.settings, self._batch_lock, holders)

    def _stream_run(self, lm, req, prepared, kwargs, cancel):
        """A StreamRun, or its batched twin when the model has a batcher."""
        batcher = self._batcher(lm)
        if batcher is not None:
            return BatchedRun(batcher, prepared, kwargs, cancel, req.params.seed)
        return StreamRun(lm, prepared, kwargs, cancel)

    def _stream_iter(self, lease, lm, req, prepared, kwargs, run, started, criteria):
        cut = StopText(req.params.stop)
        finished = False
        method = None
        try:
            for attempt in (1, 2, 3):
                run.start()
                try:
                    for piece in run.deltas():
                        out = cut.feed(piece)
                        if out:
                            yield out
                        if cut.stopped:
                            run.cancel()
                    break
                except Exception as exc:
                    # Out of memory before any text was sent: free memory and retry once,
                    # then run on a CPU copy where that is allowed.
                    early = is_oom(exc) and not (cut.emitted or cut.buffer)
                    if early and attempt == 2 and self._may_fall_back(lm, exc):
                        lm, method = self._cpu_copy(lm), "cpu_fallback"
                        prepared, kwargs = self._prepare(lm, req)
                        kwargs["stopping_criteria"] = criteria
                        run = StreamRun(lm, prepared, kwargs, run.cancel_event)
                        continue
                    if not early or attempt >= 2:
                        if is_oom(exc):
                            raise OutOfMemory(
                                f"out of memory running model '{req.model}'; try a shorter request"
                            ) from exc
                        raise
                    log.warning(
                        "out of memory in %s stream; freeing memory and retrying", req.model
                    )
                    self.manager.free_memory(exclude=req.model)
                    run = self._stream_run(lm, req, prepared, kwargs, run.cancel_event)
            tail = cut.flush()
            if tail:
                yield tail
            run.wait()
            if isinstance(run, BatchedRun):
                ids = run.completion_ids
            else:
                ids = lm.handler.completion_ids(lm, prepared, run.sequences)
            completion = trim_completion(lm, ids, kwargs["max_new_tokens"], cancelled=False)
            if cut.stopped:
                completion.finish_reason = "stop"
            extras = lm.handler.extras(lm, prepared, req)
            if method:
                extras["generation_method"] = method
            finished = True
            yield self._result(
                lm, req, prepared, cut.emitted, completion, started, run.first_token_at, extras
            )
        finally:
            if not finished:
                run.cancel()  # the client went away or an error happened: stop the model
                run.wait(timeout=self.settings.shutdown_timeout)
                log.info("stream for %s closed early after %d steps", req.model, criteria[0].steps)
            lease.release()

    def embed(
        self,
        model: str,
        texts: list[str],
        keep_alive: float | None = None,
        truncate: bool = False,
        fields: list[str] | None = None,
    ):
        """Unit vectors for texts from an embedding-family model (families.embedding.Embeddings).

        A text over the model's limit is a 400 context_length_exceeded naming its field,
        unless `truncate`.
        """
        spec = self.manager.spec(model)
        from .families import get_handler

        handler = get_handler(spec.family)
        if not hasattr(handler, "embed"):
            raise BadRequest(f"model '{model}' is not an embedding model", param="model")
        with self.manager.lease(model, keep_alive) as lease:
            return lease.model.handler.embed(lease.model, texts, truncate, fields)


class Stream:
    """The iterator `InferenceService.stream` returns.

    Invariant: the lease is released exactly once, also when the stream is closed
    before its first item (a generator closed before it starts never runs its
    `finally`, which would leak the model's reference count).
    """

    def __init__(self, gen, lease):
        self._gen = gen
        self._lease = lease
        self._started = False

    def __iter__(self):
        return self

    def __next__(self):
        self._started = True
        return next(self._gen)

    def close(self) -> None:
        if not self._started:
            self._lease.release()
        self._gen.close()
