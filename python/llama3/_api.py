"""The ``Llama3`` class: a loaded model to generate, chat, tokenize and score with.

Results follow the shapes Python users already handle: ``generate`` returns text, ``chat``
returns an OpenAI chat completion, and ``create_completion`` / ``create_chat_completion`` take
llama-cpp-python's arguments and return its dictionaries, so code written for
``llama_cpp.Llama`` runs with the import changed.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from . import _llama3
from ._compat import (DEFAULT_MIN_P, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P, LlamaCppApi,
                      _schema, constraint)
from ._errors import InvalidArgumentError

__all__ = ["Llama3", "Generation"]

# The CLI's sampling defaults (`llama3 generate --help`; llama.cpp's).
DEFAULT_MAX_TOKENS = 256


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


class Llama3(LlamaCppApi):
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
        draft_model: Any = None,
    ) -> None:
        threads = threads if threads is not None else n_threads
        if threads is not None:
            threads = _number("threads", threads, int)
            if threads < 1:
                raise InvalidArgumentError("threads must be at least 1")
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
        # llama-cpp-python's LlamaPromptLookupDecoding(num_pred_tokens=N): prompt lookup;
        # a path: a draft model with the same vocabulary.
        self._lookup = 0
        draft_path = None
        if draft_model is not None:
            if hasattr(draft_model, "num_pred_tokens"):
                self._lookup = _number("num_pred_tokens", draft_model.num_pred_tokens, int)
            elif isinstance(draft_model, (str, os.PathLike)):
                draft_path = str(draft_model)
            else:
                raise InvalidArgumentError("draft_model must be a model path or an object with num_pred_tokens "
                                           "(llama-cpp-python's LlamaPromptLookupDecoding)")
        self._native = _llama3.Model(
            None if model_path is None else str(model_path),
            device,
            dtype,
            _as_list(lora),
            n_ctx,
            None if tokenizer is None else str(tokenizer),
            verbose,
            draft_path,
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

    def _embed_inputs(self, inputs: Any) -> Tuple[List[List[int]], bool]:
        """Token lists of ``inputs`` (a text, texts, ids, or lists of ids) and whether it was
        one input."""
        if isinstance(inputs, str):
            return [self.tokenize(inputs, add_special=True, special=True)], True
        inputs = list(inputs)
        if not inputs:
            raise InvalidArgumentError("nothing to embed: give a text or a list of texts")
        if all(isinstance(i, int) and not isinstance(i, bool) for i in inputs):
            return [inputs], True
        out = []
        for i in inputs:
            if isinstance(i, str):
                out.append(self.tokenize(i, add_special=True, special=True))
            elif isinstance(i, (list, tuple)):
                out.append([_number("token id", t, int) for t in i])
            else:
                raise InvalidArgumentError(f"embed takes texts or lists of token ids, got {type(i).__name__}")
        return out, False

    def embed(self, texts: Union[str, Sequence[str], Sequence[int], Sequence[Sequence[int]]], *,
              pooling: Optional[str] = None, normalize: bool = True, truncate: bool = False,
              dimensions: Optional[int] = None):
        """Embedding vectors: a numpy float32 array (N, D) for a list of texts (or of token-id
        lists), (D,) for one text. ``pooling``: ``"mean"``, ``"last"`` (token) or ``"cls"``
        (first token); default the model's GGUF ``pooling_type``, else mean. Vectors are
        L2-normalized unless ``normalize=False``; ``dimensions`` keeps the first N components.
        A text longer than the context raises ``InvalidArgumentError`` unless
        ``truncate=True``. The same vectors as ``llama3 embed`` and the server's
        ``/v1/embeddings``; a batch gives what each text alone gives."""
        import numpy as np

        ids, one = self._embed_inputs(texts)
        if dimensions is not None:
            dimensions = _number("dimensions", dimensions, int)
            if dimensions < 1:
                raise InvalidArgumentError("dimensions must be at least 1")
        data, n, d = self._native.embed(ids, pooling, bool(normalize), bool(truncate), dimensions)
        out = np.frombuffer(data, dtype=np.float32).reshape(n, d)
        return out[0] if one else out

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

    def _start(self, prompt_ids: List[int], max_tokens: Optional[int], stop, logprobs,
               stream: bool, constraint: Optional[Tuple[str, str]] = None, lookup: Optional[int] = None,
               **sampling):
        # stream=False: the tokens come in one delivery at the end (no wake-up of this thread
        # per token, which on a machine with as many cores as compute threads costs those
        # threads time).
        if max_tokens is None:
            max_tokens = self.n_ctx  # up to the end of the context
        max_tokens = _number("max_tokens", max_tokens, int)
        if max_tokens < 0:
            max_tokens = self.n_ctx  # llama-cpp-python: <= 0 or None, the rest of the context
        k = 0 if logprobs is None or logprobs is False else (1 if logprobs is True else _number("logprobs", logprobs, int))
        if k < 0:
            raise InvalidArgumentError("logprobs must be at least 0")
        lookup = self._lookup if lookup is None else _number("lookup", lookup, int)
        if lookup < 0:
            raise InvalidArgumentError("lookup must be at least 0")
        return self._native.generate(prompt_ids, max_tokens, self._sampling(**sampling),
                                     _as_list(stop), k, stream, constraint, lookup)

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
        json_schema: Any = None,
        json_object: bool = False,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
        lookup: Optional[int] = None,
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

        Output constraints (one at a time): ``json_schema`` (a dict, JSON text or a pydantic
        model class), ``json_object=True`` (any JSON object), ``regex`` (the whole output
        matches it), ``grammar`` (llguidance's Lark syntax). A bad schema or grammar raises
        ``InvalidArgumentError`` saying what and where.

        ``lookup=N``: speculative decoding by prompt lookup, up to N draft tokens per forward
        copied from the prompt and the answer so far and verified by the model: the same output,
        faster when the answer copies from the prompt (rewriting, editing). Default: the
        instance's (``draft_model=LlamaPromptLookupDecoding(num_pred_tokens=N)``, else 0; with
        ``draft_model=PATH`` the draft model speculates unless ``lookup`` is given).
        """
        ids = self._prompt_ids(prompt)
        c = constraint(json_schema=json_schema, json_object=json_object, regex=regex, grammar=grammar)
        it = self._start(ids, max_tokens, stop, logprobs, stream, constraint=c, lookup=lookup,
                         temperature=temperature, top_p=top_p,
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
        response_format: Optional[Dict[str, Any]] = None,
        json_schema: Any = None,
        json_object: bool = False,
        regex: Optional[str] = None,
        grammar: Optional[str] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Union[None, str, Dict[str, Any]] = None,
        parallel_tool_calls: bool = True,
        lookup: Optional[int] = None,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """Answers a conversation (``[{"role": "user", "content": "Hi"}, ...]``) through the
        model's chat template. Returns an OpenAI chat completion as a dict
        (``["choices"][0]["message"]["content"]``, ``finish_reason``, ``usage``);
        ``stream=True`` yields chunks in OpenAI's streaming shape. Sampling and output
        constraints as :meth:`generate`, plus OpenAI's ``response_format``. ``tools``,
        ``tool_choice`` and ``parallel_tool_calls`` as OpenAI's: calls come back in
        ``message["tool_calls"]`` (see :meth:`create_chat_completion`)."""
        constraint(json_schema=json_schema, json_object=json_object, regex=regex, grammar=grammar,
                   response_format=response_format)  # one at a time
        if json_schema is not None:
            schema = json.loads(_schema("json_schema", json_schema))
            response_format = {"type": "json_schema", "json_schema": {"name": "schema", "schema": schema}}
        elif json_object:
            response_format = {"type": "json_object"}
        return self.create_chat_completion(
            list(messages), response_format=response_format, grammar=grammar, regex=regex,
            tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel_tool_calls, lookup=lookup,
            max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, typical_p=typical_p, repeat_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
            logit_bias=logit_bias, seed=seed, stop=stop,
            logprobs=logprobs is not None, top_logprobs=logprobs, stream=stream)
