"""Continuous batching for one loaded text model: iteration-level scheduling on one thread.

Each step the engine (a) admits waiting requests while there are free rows and KV cache
budget, prefilling them as one left-padded group in chunks of about `prefill_chunk`
tokens (one chunk per step, so running rows wait one chunk at most) and then merging
their KV into a lane of running rows (`mmserve.lanes`: short requests apart from long
ones), starting after the longest prefix the prefix cache holds (`mmserve.prefix`; a
prompt held whole but its last token skips the prefill and joins its lane at once); (b)
runs one decode forward for every row of the lane whose turn it is;
(c) samples each row with its own processors and generator (`mmserve.sampling`), reading
the row's logprobs from the raw logits first when it asked (`mmserve.logprobs`); and
(d) hands each row its token (`mmserve.rows.Row`: text, stops, limits) and evicts the
rows that finished or were cancelled from the cache at once.

The n rows of one request (`submit_group`) are admitted together and prefilled once: their
prompt is one row of the prefill, copied into each of them at the end (`mmserve.prefill`).

Locking rules:
- `_cond` guards `waiting` and `closed`. It is never held while the model runs.
- Only the engine thread touches the model, the lanes and `job`; other threads
  end rows only through `Row.fail`/`Row.finish` (the engine evicts done rows each step).
- KV budget: the rows admitted (running and prefilling) reserve rows x their longest
  final length (prompt + max new tokens) x bytes per token, an upper bound of the padded
  cache, so the cache never grows past `kv_budget` bytes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import torch

from .errors import BadRequest, Unavailable
from .generation import eos_ids
from .kvcache import cache_bytes, keep_rows, per_token_bytes, prefilled, take_rows
from .lanes import Lane, pick
from .logprobs import capture
from .prefill import Prefill, Seq
from .prefix import PrefixCache
from .rows import Row, Rows
from .sampling import RowSampling, Sampler

log = logging.getLogger("mmserve.engine")
MB = 1024**2


class TextEngine:
    """Runs every request of one text model in one continuously refilled batch."""

    def __init__(
        self,
        lm,
        max_rows: int,
        kv_budget: int,
        queue_timeout: float,
        prefill_chunk: int = 512,
        short_max_tokens: int = 0,
        main_every: int = 8,
        prefix_bytes: int = 0,
        packer=None,
    ):
        """`short_max_tokens`: requests with at most this many tokens to make decode in the
        short lane (0: one lane); `main_every`: the long lane decodes at least once per this
        many steps plus one; `prefix_bytes`: room for stored prompts' KV (`mmserve.prefix`;
        0: no prefix caching), taken out of `kv_budget` while held; `packer`: the model's
        packed weights (`mmserve.cpu_linear`), released at close. ValueError for sizes out
        of range."""
        if max_rows < 1 or kv_budget <= 0 or prefill_chunk < 1:
            raise ValueError("batch_max_size, the KV budget and prefill_chunk must be positive")
        if short_max_tokens < 0 or main_every < 1:
            raise ValueError("short_max_tokens must be >= 0 and main_every >= 1")
        self.lm = lm
        self.model = lm.model
        self.name = lm.spec.name
        self.max_rows = max_rows
        self.kv_budget = int(kv_budget)
        self.queue_timeout = queue_timeout
        self.prefill_chunk = prefill_chunk
        self.short_max_tokens = short_max_tokens
        self.main_every = main_every
        self.per_token = per_token_bytes(lm.model.config, lm.model.dtype)
        self.eos = eos_ids(lm)
        tok = lm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = pad if pad is not None else 0
        self.waiting: deque[Seq] = deque()
        self.short, self.main = Lane("short"), Lane("main")
        self.prefix = PrefixCache(min(int(prefix_bytes), self.kv_budget))
        self.packer = packer
        self.job: Prefill | None = None
        self.closed = False
        self.steps = 0  # decode forwards run
        self.sizes: deque[int] = deque(maxlen=10000)  # rows in each recent decode forward
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"engine-{self.name}", daemon=True)
        self._thread.start()

    # --- any thread -------------------------------------------------------
    def submit(self, prepared, sampling: RowSampling, cancel: threading.Event) -> Row:
        """Queue one request; its Row at once. BadRequest if it can never fit the KV budget."""
        return self.submit_group(prepared, [sampling], cancel).rows[0]

    def submit_group(self, prepared, samplings: list[RowSampling], cancel) -> Rows:
        """Queue one request with one row per sampling (its n choices), prefilled once and
        admitted together; BadRequest if they can never fit the KV budget."""
        prompt = prepared.inputs["input_ids"][0]
        reserve = int(prompt.shape[0]) + samplings[0].max_new_tokens
        if len(samplings) * reserve * self.per_token > self.kv_budget:
            raise BadRequest(
                f"prompt and max tokens ({reserve} tokens) need "
                f"{reserve * self.per_token / MB:.1f} MB of KV cache; model '{self.name}' has "
                f"{self.kv_budget / MB:.1f} MB (setting kv_cache_gb): ask for fewer tokens",
                param="max_tokens",
                code="limit_exceeded",
            )
        sink, seqs, deadline = Rows.sink(), [], time.monotonic() + self.queue_timeout
        for i, sampling in enumerate(samplings):
            tok, stop = self.lm.tokenizer, sampling.stop
            row = Row(tok, self.eos, sampling.max_new_tokens, stop, cancel, sink, i)
            sampler = Sampler(sampling, self.model.device, int(prompt.shape[0]))
            seqs.append(Seq(row, sampler, prompt, reserve, deadline))
        for s in seqs:
            s.group = seqs
        with self._cond:
            if self.closed:
                raise Unavailable(f"model '{self.name}' is unloading; try again")
            self.waiting.extend(seqs)
            self._cond.notify()
        return Rows([s.row for s in seqs], sink)

    @property
    def running(self) -> list[Seq]:
        """Every running row, short lane first."""
        return self.short.seqs + self.main.seqs

    def cache_bytes(self) -> int:
        """Bytes the KV cache holds now (running rows and a prefill in progress)."""
        job = self.job
        held = self.short.bytes() + self.main.bytes() + self.prefix.bytes
        return held + (cache_bytes(job.cache) if job is not None else 0)

    def reserved_bytes(self) -> int:
        """Bytes reserved for the admitted rows plus the prefix cache's entries."""
        job = self.job
        seqs = self.running + (job.seqs if job is not None else [])
        return self._reserved(seqs) + self.prefix.bytes

    def abort(self, error: BaseException) -> None:
        """End every request now with `error` (the engine evicts them at its next step)."""
        with self._cond:
            seqs = list(self.waiting) + list(self.running)
            seqs += self.job.seqs if self.job is not None else []
            self.waiting.clear()
            self._cond.notify()
        for s in seqs:
            s.row.fail(error)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and free the cache; requests not finished get 503."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self.abort(Unavailable(f"model '{self.name}' was unloaded; try again"))
        self.short.clear(), self.main.clear()
        if not self._thread.is_alive():  # else the engine thread clears it as it exits
            self.prefix.clear()
        self.job = None
        if self.packer is not None:
            self.packer.release()

    # --- the engine thread ------------------------------------------------
    def _reserved(self, seqs: list[Seq]) -> int:
        if not seqs:
            return 0
        return len(seqs) * max(s.reserve for s in seqs) * self.per_token

    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not (self.waiting or self.running or self.job or self.closed):
                        self._cond.wait()
                    if self.closed:
                        self.prefix.clear()
                        return
                    taken = self._admit()
                    if not (taken or self.running or self.job):
                        self._cond.wait(0.05)  # only rows that expired or were cancelled
                        continue
                try:
                    rest, looked = self._fold(taken)
                    if rest:
                        self.job = Prefill(rest, self.pad_id, self.model.config)
                        self.job.reuse(self.prefix, self.model.config, looked)
                    if self.job is not None:
                        self._prefill_step()
                    self._drop_done()
                    lane = pick(self.short, self.main, self.main_every)
                    if lane is not None:
                        self._decode_step(lane)
                except BaseException as exc:  # noqa: BLE001 - every open row gets the error
                    log.warning("step on %s failed: %s", self.name, type(exc).__name__)
                    seqs = self.short.clear() + self.main.clear()
                    seqs += self.job.seqs if self.job is not None else []
                    for s in seqs + [t for t in taken if t not in seqs]:
                        s.row.fail(exc)  # a no-op for rows that had finished
                    self.job = None
                    self.prefix.clear()  # its memory too (the failure may be out of memory)

    def _admit(self) -> list[Seq]:
        """Waiting requests that start now, in arrival order (under `_cond`)."""
        now = time.monotonic()
        for s in list(self.waiting):
            if s.row.done.is_set():
                self.waiting.remove(s)
            elif s.row.cancel_event.is_set():
                self.waiting.remove(s)
                s.row.finish("cancelled")
            elif now > s.deadline:
                self.waiting.remove(s)
                s.row.fail(
                    Unavailable(
                        f"timed out waiting for KV cache room on model '{self.name}'",
                        code="queue_timeout",
                        headers={"Retry-After": "1"},
                    )
                )
        if self.job is not None:
            return []  # one prefill group at a time
        taken: list[Seq] = []
        while self.waiting:
            group = [s for s in self.waiting[0].group if s in self.waiting]
            rows = len(self.running) + len(taken) + len(group)
            # A group larger than the batch still runs, alone.
            if rows > self.max_rows and (self.running or taken):
                break
            need = self._reserved(self.running + taken + group)
            if need > self.kv_budget - self.prefix.bytes:
                if need <= self.kv_budget:  # stored prompts give way when that is enough
                    self.prefix.shrink(self.kv_budget - need)
                if need > self.kv_budget - self.prefix.bytes:
                    break  # the oldest waits for room; later ones do not overtake it
            for s in group:
                self.waiting.remove(s)
            taken.extend(group)
        return taken

    def _forward(self, ids, mask, pos, cache, every: bool = False):
        """Logits of the last position (rows, vocab), or of every position when `every`."""
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=0 if every else 1,
        )
        return out.logits if every else out.logits[:, -1, :]

    def _prefill_step(self) -> None:
        """One chunk of the prefill group; after the last one its rows join the batch."""
        job = self.job
        rows, width = job.ids.shape
        end = min(width, job.offset + max(16, self.prefill_chunk // rows))
        sl = slice(job.offset, end)
        args = (job.ids[:, sl], job.mask[:, :end], job.pos[:, sl], job.cache)
        logits = self._forward(*args, every=True) if job.scored else self._forward(*args)
        if job.scored:
            job.score(self.lm.tokenizer, logits)
            logits = logits[:, -1, :]
        job.offset = end
        if end < width:
            return
        self.job = None
        for r, s in enumerate(job.firsts):
            self.prefix.store(s.prompt, job.cache, r, width - int(s.prompt.shape[0]))
        logits = logits[job.source]  # one row per seq: siblings read their prompt's row
        keep, sampled = [], self._sample(job.seqs, logits)
        for i, (s, token) in enumerate(zip(job.seqs, sampled, strict=True)):
            s.length, s.last = int(s.prompt.shape[0]), token
            s.row.prompt_logprobs = s.group[0].row.prompt_logprobs
            if s.row.max_new_tokens == 0:
                s.row.finish("length")  # scoring only (echo with max_tokens 0)
            elif not s.row.push(token, self._entry(s, logits[i], token)):
                keep.append(i)
        self._join([job.seqs[i] for i in keep], [job.source[i] for i in keep], job.cache, job.mask)
        self.prefix.shrink(max(0, self.kv_budget - self._reserved(self.running)))

    def _lane_of(self, s: Seq) -> Lane:
        return self.short if s.row.max_new_tokens <= self.short_max_tokens else self.main

    def _join(self, seqs: list[Seq], rows: list[int], cache, mask) -> None:
        """Put `seqs` in their lanes; seq i's KV is row `rows[i]` of `cache` (a row may serve
        several seqs: the n choices of one prompt)."""
        for lane in (self.short, self.main):
            mine = [i for i, s in enumerate(seqs) if self._lane_of(s) is lane]
            if mine:
                index = [rows[i] for i in mine]
                if len(mine) == len(seqs):  # all go to one lane: the cache is theirs
                    part, part_mask = keep_rows(cache, mask, index)
                else:
                    part, part_mask = take_rows(cache, mask, index, self.model.config)
                lane.add([seqs[i] for i in mine], part, part_mask)

    def _fold(self, taken: list[Seq]) -> tuple[list[Seq], dict]:
        """Requests whose prompt, all but its last token, is in the prefix cache join their
        lane now with that KV: their next decode step runs the last prompt token and makes
        their first token, with no prefill forward. Returns the seqs left to prefill and the
        lookups made, {id of a group's first seq: (entry, tokens shared)}."""
        rest: list[Seq] = []
        looked: dict[int, tuple] = {}
        for head in dict.fromkeys(s.group[0] for s in taken):  # each prompt once, in order
            group = [s for s in taken if s.group[0] is head]
            entry, n = None, 0
            if self.prefix.enabled and head.sampler.prompt_logprobs is None:
                entry, n = looked[id(head)] = self.prefix.lookup(head.prompt)
            last = all(s.row.max_new_tokens > 0 for s in group)  # a token to make
            if entry is None or n < int(head.prompt.shape[0]) - 1 or not last:
                rest.extend(group)
                continue
            self.prefix.count(n)
            keys = [k[None, :, :n] for k in entry.keys]
            values = [v[None, :, :n] for v in entry.values]
            cache = prefilled(self.model.config, max(s.reserve for s in group), keys, values)
            for s in group:
                s.length, s.last = n, int(head.prompt[-1])
            mask = torch.ones((1, n), dtype=torch.long, device=head.prompt.device)
            self._join(group, [0] * len(group), cache, mask)
        return rest, looked

    def _decode_step(self, lane: Lane) -> None:
        seqs = lane.seqs
        device = lane.mask.device
        ids = torch.tensor([[s.last] for s in seqs], dtype=torch.long, device=device)
        pos = torch.tensor([[s.length] for s in seqs], dtype=torch.long, device=device)
        mask = torch.cat([lane.mask, lane.mask.new_ones((len(seqs), 1))], dim=1)
        logits = self._forward(ids, mask, pos, lane.cache)
        lane.mask = mask
        self.steps += 1
        self.sizes.append(len(seqs))
        for i, (s, token) in enumerate(zip(seqs, self._sample(seqs, logits), strict=True)):
            s.length += 1
            s.last = token
            s.row.push(token, self._entry(s, logits[i], token))
        lane.drop_done()

    def _entry(self, s: Seq, logits: torch.Tensor, token: int):
        """The token's TokenLogprob from the raw logits (vocab,), when the row asked."""
        if s.sampler.logprobs is None:
            return None
        return capture(self.lm.tokenizer, logits, token, s.sampler.logprobs)

    def _drop_done(self) -> None:
        """Evict rows that finished, failed or were cancelled (≤ 1 token after a cancel)."""
        self.short.drop_done()
        self.main.drop_done()

    def _sample(self, seqs: list[Seq], logits: torch.Tensor) -> list[int]:
        """Each row's next token; plain greedy rows in one argmax, the others one by one."""
        out = [0] * len(seqs)
        plain = [i for i, s in enumerate(seqs) if s.sampler.plain_greedy]
        if plain:
            picks = logits[plain].argmax(dim=-1).tolist()
            for i, token in zip(plain, picks, strict=True):
                out[i] = token
        for i, s in enumerate(seqs):
            if not s.sampler.plain_greedy:
                history = s.history() if s.sampler.processors else s.prompt[None]
                out[i] = s.sampler(history, logits[i : i + 1])
        return out
