"""The inference service: the one path from a GenerationRequest to text, used by every API."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import psutil
import torch

from .errors import BadRequest, ModelLoadFailed, OutOfMemory, Unavailable, is_oom
from .families.rules import check_media, prepare_inputs
from .limits import check_prompt, prompt_param
from .sampling import row_sampling
from .tools import output_spec, parse_calls, tool_format
from .types import Choice, GenerationRequest, GenerationResult

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
        self._posts = 0  # HTTP POSTs being handled now (mmserve.http counts them)
        self._posts_lock = threading.Lock()
        self._rows: set = set()  # rows of the generations running now (for a fast shutdown)
        self._rows_lock = threading.Lock()
        self.shutting_down = False

    def post_started(self) -> None:
        with self._posts_lock:
            self._posts += 1

    def post_ended(self) -> None:
        with self._posts_lock:
            self._posts -= 1

    @property
    def posts(self) -> int:
        """HTTP POSTs being handled now, streams included until their last byte."""
        return self._posts

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
        if req.prompt_ids is not None and not handler.token_prompts:
            raise BadRequest(
                f"model '{spec.name}' does not take token-id prompts; send the prompt as text",
                param="prompt",
            )
        handler.check_request(spec, req)
        check_media(req, handler.media_rules(spec, spec.path(self.settings.models_dir)))
        return spec

    def _prepare(self, lm, req: GenerationRequest):
        """Model inputs and one sampling per choice (n; a seed s gives the rows s, s+1, ...),
        max tokens fitted to the context (`mmserve.limits.check_prompt`, the one place of the
        prompt-length rules; the context is read once per loaded model, `LoadedModel.context`).
        `max_tokens` 0 (scoring a prompt, with echo) generates nothing."""
        prepared = prepare_inputs(lm, req)
        vocab = len(lm.tokenizer)
        for token in req.params.logit_bias:
            if not 0 <= token < vocab:
                raise BadRequest(
                    f"logit_bias names token {token}, outside the vocabulary (0..{vocab - 1})",
                    param=f"logit_bias.{token}",
                )
        sampling = row_sampling(lm.spec.generation, req.params, self.settings.max_new_tokens_limit)
        sampling.max_new_tokens = check_prompt(
            prepared.prompt_tokens,
            req.params.max_new_tokens,
            sampling.max_new_tokens,
            lm.context,
            self.settings.max_prompt_tokens,
            prompt_param(req),
            lm.handler.completion_in_context,
        )
        if req.params.max_new_tokens == 0:
            sampling.max_new_tokens = 0
        sampling.constraint = self._constraint(lm, req)
        samplings = [sampling]
        for i in range(1, max(1, req.params.n)):
            seed = None if sampling.seed is None else sampling.seed + i
            samplings.append(dataclasses.replace(sampling, seed=seed))
        return prepared, samplings

    @staticmethod
    def _constraint(lm, req: GenerationRequest):
        """The request's grammar (response_format, format or tools), compiled once per
        tokenizer and spec; None for free text."""
        spec = output_spec(req, lm.tokenizer)
        if spec is None:
            return None
        from .generation import eos_ids, logits_size
        from .grammar import build_constraint

        think = "inside" if lm.spec.reasoning else "may"
        return build_constraint(spec, lm.tokenizer, logits_size(lm), eos_ids(lm), think)

    def _result(self, lm, req, prepared, rows, started, extras=None):
        extras = extras or {}
        spec = lm.spec
        first_at = rows.first_token_at
        choices = [
            Choice(i, r.text, len(r.completion_ids), r.finish_reason or "stop", r.logprobs,
                   r.cut.matched)  # fmt: skip
            for i, r in enumerate(rows.rows)
        ]
        for c in choices:
            if req.params.logprobs is not None:
                c.logprobs = c.logprobs or []
            if req.tools and req.tool_choice != "none":
                c.text, calls = parse_calls(c.text, req.tools, tool_format(lm.tokenizer))
                c.tool_calls = calls or None
        result = GenerationResult(
            text=choices[0].text,
            tool_calls=choices[0].tool_calls,
            prompt_tokens=prepared.prompt_tokens,
            completion_tokens=rows.completion_tokens,
            finish_reason=choices[0].finish_reason,
            model=spec.name,
            model_type=spec.family,
            generation_method=extras.pop("generation_method", lm.plan.device),
            memory_optimized=spec.quantization is not None,
            audio_wav_base64=extras.get("audio_wav_base64"),
            seconds=time.monotonic() - started,
            first_token_seconds=(first_at - started) if first_at else None,
            choices=choices,
            prompt_text=prepared.extra.get("prompt_text"),
            prompt_logprobs=rows.rows[0].prompt_logprobs,
        )
        if self.hooks is not None:
            self.hooks.on_generation(result)
        return result

    # --- generation: one path, streamed or not ------------------------------
    def generate(self, req: GenerationRequest) -> GenerationResult:
        """Generate the whole answer: the stream below, read to its end."""
        events = self.stream(req)
        result = None
        try:
            for item in events:
                result = item
        finally:
            events.close()
        return result

    def stream(self, req: GenerationRequest):
        """Start a generation. Checks, the model lease and the engine's admission happen now,
        before any byte is sent, so their errors get a proper status; the returned iterator
        yields text deltas and finally the GenerationResult. Closing it stops the model.
        """
        self.check(req)
        started = time.monotonic()
        lease = self.manager.acquire(req.model, req.keep_alive)
        cancel = threading.Event()
        try:
            lm = lease.model
            prepared, samplings = self._prepare(lm, req)
            row = self._submit(lm.engine, prepared, samplings, cancel)
        except BaseException:
            lease.release()
            raise
        gen = self._stream_iter(lease, lm, req, prepared, samplings, row, started)

        def unstarted_close() -> None:  # the generator's `finally` never runs then
            cancel.set()
            self._forget(row)
            lease.release()

        return Stream(gen, unstarted_close)

    def _submit(self, engine, prepared, samplings, cancel):
        """The request's rows (`mmserve.rows.Rows`), one per choice, queued on `engine`."""
        if self.shutting_down:
            raise Unavailable("server shutting down", code="shutting_down")
        row = engine.submit_group(prepared, samplings, cancel)
        with self._rows_lock:
            self._rows.add(row)
        return row

    def abort_all(self, message: str = "server shutting down") -> None:
        """Fast shutdown: every generation ends at its next step with a 503 `message` (the
        last event of a stream); new ones are refused."""
        self.shutting_down = True
        error = Unavailable(message, code="shutting_down")
        with self._rows_lock:
            rows = list(self._rows)
        for row in rows:
            row.fail(error)  # before the cancel event: the row must end as an error
            row.cancel_event.set()

    def _stream_iter(self, lease, lm, req, prepared, samplings, row, started):
        """The one generation loop. Out of memory before any text was sent: free idle
        models and retry once, then (GPU only) run on a CPU copy where that is allowed."""
        engine, own_engine, method = lm.engine, None, None
        cancel = row.cancel_event
        try:
            for attempt in (1, 2, 3):
                try:
                    yield from row.deltas()
                    break
                except Exception as exc:
                    early = is_oom(exc) and not row.text
                    if early and attempt == 2 and self._may_fall_back(lm, exc):
                        lm, method = self._cpu_copy(lm), "cpu_fallback"
                        own_engine = engine = lm.handler.make_engine(lm, self.settings)
                        prepared, samplings = self._prepare(lm, req)
                    elif not early or attempt >= 2:
                        if is_oom(exc):
                            raise OutOfMemory(
                                f"out of memory running model '{req.model}'; try a shorter request"
                            ) from exc
                        raise
                    else:
                        log.warning("out of memory in %s; freeing memory and retrying", req.model)
                        self.manager.free_memory(exclude=req.model)
                    self._forget(row)
                    row = self._submit(engine, prepared, samplings, cancel)
            extras = lm.handler.extras(lm, prepared, req)
            if method:
                extras["generation_method"] = method
            yield self._result(lm, req, prepared, row, started, extras)
        finally:
            if not row.all_done():
                cancel.set()  # the client went away or an error happened: stop the model
                row.wait(timeout=self.settings.shutdown_timeout)
                # One step per generated token, the first one being the prompt's pass.
                steps = row.completion_tokens
                log.info("stream for %s closed early after %d steps", req.model, steps)
            self._forget(row)
            if own_engine is not None:
                own_engine.close()
            lease.release()

    def _forget(self, row) -> None:
        with self._rows_lock:
            self._rows.discard(row)

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
    `finally`, which would leak the model's reference count and leave its row running).
    """

    def __init__(self, gen, unstarted_close):
        self._gen = gen
        self._unstarted_close = unstarted_close
        self._started = False

    def __iter__(self):
        return self

    def __next__(self):
        self._started = True
        return next(self._gen)

    def close(self) -> None:
        if not self._started:
            self._started = True
            self._unstarted_close()
        self._gen.close()
