"""The ``Llama3`` class: a loaded model to generate, chat, tokenize and score with.

Results follow the shapes Python users already handle: ``generate`` returns text, ``chat``
returns an OpenAI chat completion, and ``create_completion`` / ``create_chat_completion`` take
llama-cpp-python's arguments and return its dictionaries, so code written for
``llama_cpp.Llama`` runs with the import changed.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from . import _llama3
from ._errors import InvalidArgumentError

__all__ = ["Llama3", "Generation"]

# The CLI's sampling defaults (`llama3 generate --help`; llama.cpp's).
DEFAULT_MAX_TOKENS = 256
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


class Generation(str):
    """The text ``Llama3.generate`` returns, with what produced it: ``token_ids``,
    ``logprobs`` (log p of each token, with ``logprobs=`` set), ``top_logprobs`` (each step's
    ``{token_id: logprob}``), ``finish_reason`` (``"stop"`` or ``"length"``),
    ``prompt_tokens`` and ``completion_tokens``."""

    token_ids: List[int]
    logprobs: Optional[List[float]]
    top_logprobs: Optional[List[Dict[int, float]]]
    finish_reason: Optional[str]
    prompt_tokens: int
    completion_tokens: int


def _as_list(stop: Union[None, str, Sequence[str]]) -> List[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    return [str(s) for s in stop]


def _number(name: str, value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number, got {value!r}")
    if kind is int:
        if int(value) != value:
            raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _content(message: Dict[str, Any]) -> str:
    """A message's text: a string, or the text parts of OpenAI's content list."""
    c = message.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text")
    raise InvalidArgumentError(f"message content must be a string or a list of parts, got {type(c).__name__}")


# llama-cpp-python arguments accepted at their neutral value only (llama.cpp-only samplers,
# grammars, tools: not in llama3 yet).
_NEUTRAL: Dict[str, Any] = {
    "tfs_z": 1.0, "mirostat_mode": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
    "stopping_criteria": None, "logits_processor": None, "grammar": None, "response_format": None,
    "tools": None, "tool_choice": None, "functions": None, "function_call": None, "n": 1,
}


def _check_unsupported(fn: str, kwargs: Dict[str, Any]) -> None:
    for name, value in kwargs.items():
        if name not in _NEUTRAL:
            raise TypeError(f"{fn}() got an unexpected keyword argument {name!r}")
        if value is not None and value != _NEUTRAL[name] and name not in ("mirostat_tau", "mirostat_eta"):
            raise InvalidArgumentError(f"{name}={value!r} is not supported by llama3")


class Llama3:
    """A Llama-family model loaded for inference.

    ``model_path``: a GGUF file, a Hugging Face model directory (``config.json`` +
    safetensors + tokenizer files), ``"hf:owner/name[/file.gguf]"``, or ``None`` for the
    default model (SmolLM2-135M-Instruct Q4_1, fetched into ``~/.cache/llama3`` on first use,
    which is said on stderr).

    ``device``: ``"auto"`` (the first GPU when built with CUDA and one is present, else the
    CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``. ``dtype``: ``"auto"`` (f32 on the CPU, bf16 on
    a GPU), ``"f32"``, ``"f16"``, ``"bf16"`` (quantized GGUF weights stay quantized).
    ``lora``: PEFT adapter directories applied without merging (``"PATH"`` or
    ``"PATH:SCALE"``, one or a list). ``n_ctx``: positions per generation, prompt and answer
    (default: the model's context, at most 4096). ``threads``: CPU threads (default: all
    cores; takes effect only before the first model runs in this process). ``tokenizer``: a
    ``tokenizer.json`` (or Llama 3 ``tokenizer.model``) used instead of the model's.

    One instance may be used from several threads at once; each call gets the answer it would
    get alone. Model work releases the GIL, and Ctrl-C interrupts a long call.

    llama-cpp-python's ``n_threads``, ``seed``, ``verbose``, ``n_batch`` and ``n_gpu_layers``
    are accepted too.
    """

    def __init__(
        self,
        model_path: Optional[str] = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        lora: Union[None, str, Sequence[str]] = None,
        n_ctx: Optional[int] = None,
        threads: Optional[int] = None,
        tokenizer: Optional[str] = None,
        verbose: bool = True,
        seed: Optional[int] = None,
        n_threads: Optional[int] = None,
        n_batch: Optional[int] = None,
        n_gpu_layers: Optional[int] = None,
    ) -> None:
        threads = threads if threads is not None else n_threads
        if threads is not None:
            threads = _number("threads", threads, int)
            if threads < 1:
                raise InvalidArgumentError("threads must be at least 1")
            import os

            os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        if n_ctx is not None:
            n_ctx = _number("n_ctx", n_ctx, int)
            if n_ctx < 1:
                raise InvalidArgumentError("n_ctx must be at least 1")
        if n_gpu_layers is not None and device == "auto":
            device = "cpu" if n_gpu_layers == 0 else "auto"
        del n_batch  # prompts are prefilled in chunks of 512 tokens
        self.model_path = model_path
        self.verbose = verbose
        self._seed = seed
        self._native = _llama3.Model(
            None if model_path is None else str(model_path),
            device,
            dtype,
            _as_list(lora),
            n_ctx,
            None if tokenizer is None else str(tokenizer),
            verbose,
        )
        self._info: Optional[Dict[str, Any]] = None

    # ----- basics ------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        """Positions per generation (prompt and answer)."""
        return self._native.n_ctx

    @property
    def info(self) -> Dict[str, Any]:
        """Architecture, parameters, context, weight types, device and chat template."""
        if self._info is None:
            self._info = json.loads(self._native.info())
        return dict(self._info)

    def tokenize(self, text: Union[str, bytes], add_special: bool = True, special: bool = False) -> List[int]:
        """Token ids of ``text`` (``str``, or UTF-8 ``bytes`` as llama-cpp-python takes);
        ``add_special``: the BOS the model adds; ``special``: parse ``<|im_start|>``-style
        text as special tokens."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise InvalidArgumentError(f"text must be str or bytes, got {type(text).__name__}")
        return self._native.tokenize(text, add_special, special)

    def detokenize(self, ids: Sequence[int], skip_special: bool = False) -> str:
        """The text of token ids."""
        return self._native.detokenize([_number("token id", i, int) for i in ids], skip_special)

    def logits(self, ids: Union[str, Sequence[int]]):
        """Logits of every position of ``ids`` (a list of ids, or a text tokenized with BOS):
        a numpy float32 array (T, V)."""
        import numpy as np

        if isinstance(ids, str):
            ids = self.tokenize(ids)
        data, t, v = self._native.logits([_number("token id", i, int) for i in ids])
        return np.frombuffer(data, dtype=np.float32).reshape(t, v)

    def score(self, context: str, continuations: Union[str, Sequence[str]]) -> List[float]:
        """``log p(continuation | context)`` (natural log, summed over the continuation's
        tokens) for each continuation, as ``llama3 eval`` computes them."""
        if isinstance(continuations, str):
            continuations = [continuations]
        return [lp for lp, _, _ in self._native.score(context, list(continuations))]

    def perplexity(self, text: str, n_ctx: int = 512, stride: Optional[int] = None,
                   max_chunks: Optional[int] = None) -> Dict[str, Any]:
        """Perplexity of ``text``: llama.cpp's protocol (independent chunks of ``n_ctx``,
        second half of each scored), or HF's sliding window with ``stride``. Returns the
        report ``llama3 perplexity --json`` prints (``ppl``, ``ppl_stderr``, ``nll_mean``...)."""
        return json.loads(self._native.perplexity(text, n_ctx, stride, 1, max_chunks))

    # ----- generation --------------------------------------------------------------------

    def _sampling(self, temperature, top_p, top_k, min_p, typical_p, repetition_penalty,
                  frequency_penalty, presence_penalty, seed, logit_bias) -> str:
        if seed is None:
            seed = self._seed if self._seed is not None else random.getrandbits(63)
        bias = []
        for k, b in (logit_bias or {}).items():
            bias.append([_number("logit_bias token id", int(k), int), _number("logit_bias value", b, float)])
        return json.dumps({
            "temperature": _number("temperature", temperature, float),
            "top_k": _number("top_k", top_k, int),
            "top_p": _number("top_p", top_p, float),
            "min_p": _number("min_p", min_p, float),
            "typical_p": _number("typical_p", typical_p, float),
            "repeat_penalty": _number("repetition_penalty", repetition_penalty, float),
            "frequency_penalty": _number("frequency_penalty", frequency_penalty, float),
            "presence_penalty": _number("presence_penalty", presence_penalty, float),
            "logit_bias": bias,
            "seed": _number("seed", seed, int) & ((1 << 64) - 1),
        })

    def _start(self, prompt_ids: List[int], max_tokens: Optional[int], stop, logprobs, **sampling):
        if max_tokens is None:
            max_tokens = self.n_ctx  # up to the end of the context
        max_tokens = _number("max_tokens", max_tokens, int)
        if max_tokens < 0:
            max_tokens = self.n_ctx  # llama-cpp-python: <= 0 or None, the rest of the context
        k = 0 if logprobs is None or logprobs is False else (1 if logprobs is True else _number("logprobs", logprobs, int))
        if k < 0:
            raise InvalidArgumentError("logprobs must be at least 0")
        return self._native.generate(prompt_ids, max_tokens, self._sampling(**sampling), _as_list(stop), k)

    def _prompt_ids(self, prompt: Union[str, Sequence[int]]) -> List[int]:
        if isinstance(prompt, str):
            # As `llama3 generate -p` does: BOS if the model adds one, special tokens parsed.
            return self.tokenize(prompt, add_special=True, special=True)
        return [_number("token id", i, int) for i in prompt]

    def generate(
        self,
        prompt: Union[str, Sequence[int]],
        *,
        max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        top_k: int = DEFAULT_TOP_K,
        min_p: float = DEFAULT_MIN_P,
        typical_p: float = 1.0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        logit_bias: Optional[Dict[int, float]] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        logprobs: Optional[int] = None,
        stream: bool = False,
    ) -> Union[Generation, Iterator[str]]:
        """Continues ``prompt`` (text, tokenized with BOS; or token ids).

        Returns the generated text (a ``str``; a :class:`Generation` with token ids, finish
        reason and, with ``logprobs=K``, each token's log-probability and the K most likely
        alternatives). ``stream=True`` returns an iterator of text pieces instead; leaving the
        loop early stops the generation.

        Defaults are the CLI's (``llama3 generate``): 256 tokens, temperature 0.8 (0 is
        greedy), top-k 40, top-p 0.95, min-p 0.05, no penalties, a random seed. Generation
        ends at an end token, ``max_tokens`` (None: the end of the context) or a ``stop``
        string, which is not included.
        """
        ids = self._prompt_ids(prompt)
        it = self._start(ids, max_tokens, stop, logprobs, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, typical_p=typical_p,
                         repetition_penalty=repetition_penalty, frequency_penalty=frequency_penalty,
                         presence_penalty=presence_penalty, seed=seed, logit_bias=logit_bias)
        if stream:
            return (text for text, _, _, _ in it if text)
        pieces, tokens, lps, tops = [], [], [], []
        for text, tid, lp, top in it:
            pieces.append(text)
            if tid is not None:
                tokens.append(tid)
                lps.append(lp)
                tops.append(dict(top))
        out = Generation("".join(pieces))
        out.token_ids = tokens
        out.logprobs = lps if logprobs else None
        out.top_logprobs = tops if logprobs else None
        out.finish_reason = it.finish_reason
        out.prompt_tokens = it.prompt_tokens
        out.completion_tokens = it.completion_tokens
        return out

    def __call__(self, prompt: Union[str, Sequence[int]], *args: Any, **kwargs: Any):
        """``create_completion`` (llama-cpp-python's ``llm(prompt, ...)``)."""
        return self.create_completion(prompt, *args, **kwargs)

    def chat(
        self,
        messages: Sequence[Dict[str, Any]],
        *,
        max_tokens: Optional[int] = DEFAULT_MAX_TOKENS,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        top_k: int = DEFAULT_TOP_K,
        min_p: float = DEFAULT_MIN_P,
        typical_p: float = 1.0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        logit_bias: Optional[Dict[int, float]] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        logprobs: Optional[int] = None,
        stream: bool = False,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Answers a conversation (``[{"role": "user", "content": "Hi"}, ...]``) through the
        model's chat template. Returns an OpenAI chat completion as a dict
        (``["choices"][0]["message"]["content"]``, ``finish_reason``, ``usage``);
        ``stream=True`` yields chunks in OpenAI's streaming shape. Sampling as
        :meth:`generate`."""
        return self.create_chat_completion(
            list(messages), max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, typical_p=typical_p, repeat_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            logit_bias=logit_bias, seed=seed, stop=stop,
            logprobs=logprobs is not None, top_logprobs=logprobs, stream=stream)

    # ----- llama-cpp-python's API --------------------------------------------------------

    def _model_name(self, model: Optional[str]) -> str:
        return model or str(self.model_path or self.info.get("path", "llama3"))

    def _piece(self, tid: int) -> str:
        return self._native.detokenize([tid], False)

    def create_completion(
        self,
        prompt: Union[str, Sequence[int]],
        suffix: Optional[str] = None,
        max_tokens: Optional[int] = 16,
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        min_p: float = DEFAULT_MIN_P,
        typical_p: float = 1.0,
        logprobs: Optional[int] = None,
        echo: bool = False,
        stop: Union[None, str, List[str]] = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        top_k: int = DEFAULT_TOP_K,
        stream: bool = False,
        seed: Optional[int] = None,
        model: Optional[str] = None,
        logit_bias: Optional[Dict[int, float]] = None,
        **unsupported: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A text completion in llama-cpp-python's shape (``{"id", "object":
        "text_completion", "created", "model", "choices": [{"text", "index", "logprobs",
        "finish_reason"}], "usage"}``), or its stream of chunks with ``stream=True``.
        ``max_tokens=None`` generates up to the end of the context; ``echo`` puts the prompt
        before the answer. ``suffix`` (infill) and llama.cpp-only knobs (mirostat, grammar,
        logits processors...) raise ``InvalidArgumentError`` when set."""
        _check_unsupported("create_completion", unsupported)
        if suffix is not None:
            raise InvalidArgumentError("suffix (infill) is not supported by llama3")
        ids = self._prompt_ids(prompt)
        prompt_text = prompt if isinstance(prompt, str) else self.detokenize(ids)
        it = self._start(ids, max_tokens, stop, logprobs, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, typical_p=typical_p,
                         repetition_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                         presence_penalty=presence_penalty, seed=seed, logit_bias=logit_bias)
        cid = f"cmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = self._model_name(model)

        def lp_entry(tid, lp, top, offset):
            return {"tokens": [self._piece(tid)], "text_offset": [offset], "token_logprobs": [lp],
                    "top_logprobs": [{self._piece(t): l for t, l in top}]}

        if stream:
            def chunks():
                offset = len(prompt_text) if echo else 0
                if echo:
                    yield {"id": cid, "object": "text_completion", "created": created, "model": name,
                           "choices": [{"text": prompt_text, "index": 0, "logprobs": None, "finish_reason": None}]}
                for text, tid, lp, top in it:
                    lpo = lp_entry(tid, lp, top, offset) if logprobs is not None and tid is not None else None
                    offset += len(text)
                    yield {"id": cid, "object": "text_completion", "created": created, "model": name,
                           "choices": [{"text": text, "index": 0, "logprobs": lpo, "finish_reason": None}]}
                yield {"id": cid, "object": "text_completion", "created": created, "model": name,
                       "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": it.finish_reason}]}
            return chunks()

        text, toks, offsets, lps, tops = "", [], [], [], []
        base = len(prompt_text) if echo else 0
        for piece, tid, lp, top in it:
            if tid is not None:
                toks.append(self._piece(tid))
                offsets.append(base + len(text))
                lps.append(lp)
                tops.append({self._piece(t): l for t, l in top})
            text += piece
        lp_obj = None
        if logprobs is not None:
            lp_obj = {"tokens": toks, "text_offset": offsets, "token_logprobs": lps, "top_logprobs": tops}
        return {
            "id": cid, "object": "text_completion", "created": created, "model": name,
            "choices": [{"text": (prompt_text + text) if echo else text, "index": 0,
                         "logprobs": lp_obj, "finish_reason": it.finish_reason}],
            "usage": {"prompt_tokens": it.prompt_tokens, "completion_tokens": it.completion_tokens,
                      "total_tokens": it.prompt_tokens + it.completion_tokens},
        }

    def create_chat_completion(
        self,
        messages: List[Dict[str, Any]],
        temperature: float = DEFAULT_TEMPERATURE,
        top_p: float = DEFAULT_TOP_P,
        top_k: int = DEFAULT_TOP_K,
        min_p: float = DEFAULT_MIN_P,
        typical_p: float = 1.0,
        stream: bool = False,
        stop: Union[None, str, List[str]] = None,
        seed: Optional[int] = None,
        max_tokens: Optional[int] = None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repeat_penalty: float = 1.0,
        model: Optional[str] = None,
        logit_bias: Optional[Dict[int, float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        **unsupported: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A chat completion in OpenAI's (and llama-cpp-python's) shape, or its stream of
        ``chat.completion.chunk`` dicts with ``stream=True``. Tools, response formats and
        grammars raise ``InvalidArgumentError`` when set."""
        _check_unsupported("create_chat_completion", unsupported)
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidArgumentError("messages must be a non-empty list of {'role', 'content'} dicts")
        pairs = []
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise InvalidArgumentError(f"each message needs a 'role': {m!r}")
            pairs.append((str(m["role"]), _content(m)))
        ids = self._native.chat_ids(pairs, True)
        k = (top_logprobs or 0) if logprobs else None
        it = self._start(ids, max_tokens, stop, k, temperature=temperature, top_p=top_p, top_k=top_k,
                         min_p=min_p, typical_p=typical_p, repetition_penalty=repeat_penalty,
                         frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                         seed=seed, logit_bias=logit_bias)
        cid = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = self._model_name(model)

        def entry(tid, lp, top):
            piece = self._piece(tid)
            return {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8")),
                    "top_logprobs": [{"token": self._piece(t), "logprob": l,
                                      "bytes": list(self._piece(t).encode("utf-8"))} for t, l in top]}

        if stream:
            def chunks():
                def chunk(delta, finish=None, lp=None):
                    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
                yield chunk({"role": "assistant", "content": ""})
                for text, tid, lp, top in it:
                    lpo = {"content": [entry(tid, lp, top)]} if logprobs and tid is not None else None
                    yield chunk({"content": text}, lp=lpo)
                yield chunk({}, it.finish_reason)
            return chunks()

        text, content_lps = "", []
        for piece, tid, lp, top in it:
            text += piece
            if logprobs and tid is not None:
                content_lps.append(entry(tid, lp, top))
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": {"content": content_lps} if logprobs else None,
                         "finish_reason": it.finish_reason}],
            "usage": {"prompt_tokens": it.prompt_tokens, "completion_tokens": it.completion_tokens,
                      "total_tokens": it.prompt_tokens + it.completion_tokens},
        }
