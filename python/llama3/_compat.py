"""llama-cpp-python's completion API on :class:`llama3.Llama3`: ``create_completion``,
``create_chat_completion`` and ``__call__`` take its arguments and return its dictionaries
(which are OpenAI's), so code written for ``llama_cpp.Llama`` runs with the import changed."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ._errors import InvalidArgumentError

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05


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
# tools: not in llama3 yet).
_NEUTRAL: Dict[str, Any] = {
    "tfs_z": 1.0, "mirostat_mode": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
    "stopping_criteria": None, "logits_processor": None,
    "functions": None, "function_call": None, "n": 1,
}


def _message(m: Any) -> Dict[str, Any]:
    """One OpenAI message for the native chat template: text content, tool calls with their
    arguments as JSON text, tool results with the call they answer."""
    if not isinstance(m, dict) or "role" not in m:
        raise InvalidArgumentError(f"each message needs a 'role': {m!r}")
    out: Dict[str, Any] = {"role": str(m["role"]), "content": _content(m)}
    calls = []
    for c in m.get("tool_calls") or []:
        fn = c.get("function", {}) if isinstance(c, dict) else {}
        if "name" not in fn:
            raise InvalidArgumentError(f"a tool call needs function.name: {c!r}")
        args = fn.get("arguments", "{}")
        calls.append({"id": str(c.get("id", "")), "type": "function",
                      "function": {"name": fn["name"], "arguments": args if isinstance(args, str) else json.dumps(args)}})
    if calls:
        out["tool_calls"] = calls
    for key in ("tool_call_id", "name"):
        if m.get(key) is not None:
            out[key] = str(m[key])
    if out["role"] == "tool" and "tool_call_id" not in out:
        raise InvalidArgumentError("a message with role 'tool' needs its 'tool_call_id'")
    return out


def _schema(name: str, schema: Any) -> str:
    """A JSON schema as JSON text: a dict, a JSON string, or a pydantic model class."""
    if hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    if isinstance(schema, str):
        return schema
    if isinstance(schema, (dict, bool)):
        return json.dumps(schema)
    raise InvalidArgumentError(f"{name} must be a dict, a JSON string or a pydantic model, got {type(schema).__name__}")


def constraint(json_schema: Any = None, json_object: bool = False, regex: Optional[str] = None,
               grammar: Optional[str] = None, response_format: Optional[Dict[str, Any]] = None,
               ) -> Optional[Tuple[str, str]]:
    """The one output constraint asked for, as (kind, data) for the native ``generate``."""
    found: List[Tuple[str, Tuple[str, str]]] = []
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise InvalidArgumentError('response_format must be a dict with a "type": text, json_object or json_schema')
        # Pydantic models as schemas, in llama-cpp-python's {"type": "json_object", "schema": ...}
        # and in OpenAI's json_schema.
        rf = dict(response_format)
        if hasattr(rf.get("schema"), "model_json_schema"):
            rf["schema"] = rf["schema"].model_json_schema()
        js = rf.get("json_schema")
        if isinstance(js, dict) and hasattr(js.get("schema"), "model_json_schema"):
            rf["json_schema"] = {**js, "schema": js["schema"].model_json_schema()}
        from . import _llama3

        c = _llama3.response_format_constraint(json.dumps(rf))
        if c is not None:
            found.append(("response_format", tuple(c)))
    if json_schema is not None:
        found.append(("json_schema", ("json_schema", _schema("json_schema", json_schema))))
    if json_object:
        found.append(("json_object", ("json_object", "")))
    if regex is not None:
        if not isinstance(regex, str):
            raise InvalidArgumentError(f"regex must be a string, got {type(regex).__name__}")
        found.append(("regex", ("regex", regex)))
    if grammar is not None:
        if not isinstance(grammar, str):
            raise InvalidArgumentError("grammar must be a string in llguidance's Lark syntax (llama.cpp's LlamaGrammar objects are not read)")
        found.append(("grammar", ("lark", grammar)))
    if len(found) > 1:
        raise InvalidArgumentError("give one output constraint, not several: " + ", ".join(n for n, _ in found))
    return found[0][1] if found else None


def _check_unsupported(fn: str, kwargs: Dict[str, Any]) -> None:
    for name, value in kwargs.items():
        if name not in _NEUTRAL:
            raise TypeError(f"{fn}() got an unexpected keyword argument {name!r}")
        if value is not None and value != _NEUTRAL[name] and name not in ("mirostat_tau", "mirostat_eta"):
            raise InvalidArgumentError(f"{name}={value!r} is not supported by llama3")


class LlamaCppApi:
    """The llama-cpp-python methods; mixed into ``Llama3``, which provides ``_prompt_ids``,
    ``_start``, ``_native``, ``info`` and ``model_path``."""

    def __call__(self, prompt: Union[str, Sequence[int]], *args: Any, **kwargs: Any):
        """``create_completion`` (llama-cpp-python's ``llm(prompt, ...)``)."""
        return self.create_completion(prompt, *args, **kwargs)

    def _model_name(self, model: Optional[str]) -> str:
        return model or str(self.model_path or self.info.get("path", "llama3"))

    def _piece(self, tid: int) -> str:
        return self._native.detokenize([tid], False)

    def create_embedding(self, input: Union[str, List[str], List[int], List[List[int]]],
                         model: Optional[str] = None, **kwargs: Any) -> Dict[str, Any]:
        """Embeddings in OpenAI's (and llama-cpp-python's) shape: ``{"object": "list", "data":
        [{"object": "embedding", "embedding": [...], "index": i}], "model", "usage"}``. Keyword
        arguments as :meth:`embed` (``pooling``, ``normalize``, ``truncate``, ``dimensions``)."""
        ids, _ = self._embed_inputs(input)
        vectors = self.embed(ids, **kwargs)
        n = sum(len(i) for i in ids)
        return {"object": "list", "model": self._model_name(model),
                "data": [{"object": "embedding", "embedding": v.tolist(), "index": i} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n, "total_tokens": n}}

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
        grammar: Optional[str] = None,
        regex: Optional[str] = None,
        **unsupported: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A text completion in llama-cpp-python's shape (``{"id", "object":
        "text_completion", "created", "model", "choices": [{"text", "index", "logprobs",
        "finish_reason"}], "usage"}``), or its stream of chunks with ``stream=True``.
        ``max_tokens=None`` generates up to the end of the context; ``echo`` puts the prompt
        before the answer. ``grammar``: the output matches this grammar, in llguidance's Lark
        syntax; ``regex`` (a llama3 extension, as the server's): the output matches it.
        ``suffix`` (infill) and llama.cpp-only knobs (mirostat, logits processors...) raise
        ``InvalidArgumentError`` when set."""
        _check_unsupported("create_completion", unsupported)
        if suffix is not None:
            raise InvalidArgumentError("suffix (infill) is not supported by llama3")
        ids = self._prompt_ids(prompt)
        prompt_text = prompt if isinstance(prompt, str) else self.detokenize(ids)
        it = self._start(ids, max_tokens, stop, logprobs, stream, temperature=temperature, top_p=top_p,
                         top_k=top_k, min_p=min_p, typical_p=typical_p,
                         repetition_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
                         presence_penalty=presence_penalty, seed=seed, logit_bias=logit_bias,
                         constraint=constraint(grammar=grammar, regex=regex))
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
                      "total_tokens": it.prompt_tokens + it.completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": it.cached_tokens}},
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
        response_format: Optional[Dict[str, Any]] = None,
        grammar: Optional[str] = None,
        regex: Optional[str] = None,
        tools: Optional[List[Dict[str, Any]]] = None,
        tool_choice: Union[None, str, Dict[str, Any]] = None,
        parallel_tool_calls: bool = True,
        lookup: Optional[int] = None,
        **unsupported: Any,
    ) -> Union[Dict[str, Any], Iterator[Dict[str, Any]]]:
        """A chat completion in OpenAI's (and llama-cpp-python's) shape, or its stream of
        ``chat.completion.chunk`` dicts with ``stream=True``. ``response_format``: OpenAI's
        ``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name",
        "schema"}}`` (or llama-cpp-python's ``{"type": "json_object", "schema": ...}``);
        ``grammar``: a grammar in llguidance's Lark syntax; ``regex`` (a llama3 extension, as
        the server's): the answer matches it.

        ``tools`` (OpenAI's ``[{"type": "function", "function": {"name", "description",
        "parameters"}}]``), ``tool_choice`` (``"auto"``, ``"none"``, ``"required"`` or
        ``{"type": "function", "function": {"name": ...}}``) and ``parallel_tool_calls``: calls
        come back in ``message["tool_calls"]`` with ``finish_reason`` ``"tool_calls"``; under
        ``"required"`` or a named function the arguments match the tool's schema. ``role:
        "tool"`` messages (with ``tool_call_id``) carry results back. ``lookup=N``: prompt-lookup
        speculative decoding (a llama3 extension; see :meth:`Llama3.generate`)."""
        _check_unsupported("create_chat_completion", unsupported)
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidArgumentError("messages must be a non-empty list of {'role', 'content'} dicts")
        msgs = json.dumps([_message(m) for m in messages])
        ids, tool_constraint, parser = self._native.chat_plan(
            msgs, None if tools is None else json.dumps(tools),
            None if tool_choice is None else json.dumps(tool_choice), bool(parallel_tool_calls))
        asked = constraint(grammar=grammar, regex=regex, response_format=response_format)
        if tool_constraint is not None and asked is not None:
            raise InvalidArgumentError("response_format, grammar and regex cannot be combined with tool calls "
                                       "(tool_choice='none' leaves them out)")
        k = (top_logprobs or 0) if logprobs else None
        it = self._start(ids, max_tokens, stop, k, stream, temperature=temperature, top_p=top_p, top_k=top_k,
                         min_p=min_p, typical_p=typical_p, repetition_penalty=repeat_penalty,
                         frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
                         seed=seed, logit_bias=logit_bias, constraint=tool_constraint or asked, lookup=lookup)
        cid = f"chatcmpl-{uuid.uuid4()}"
        created = int(time.time())
        name = self._model_name(model)

        def entry(tid, lp, top):
            piece = self._piece(tid)
            return {"token": piece, "logprob": lp, "bytes": list(piece.encode("utf-8")),
                    "top_logprobs": [{"token": self._piece(t), "logprob": l,
                                      "bytes": list(self._piece(t).encode("utf-8"))} for t, l in top]}

        def reader():
            from . import _llama3

            return _llama3.ToolReader(parser[0], parser[1], tool_constraint is not None)

        def reply(shown, got):
            """(message, finish_reason) of a finished answer: the text shown and what the
            reader held, read for calls."""
            content = shown + (got["content"] or "")
            message = {"role": "assistant", "content": content or None}
            if got["tool_calls"]:
                message["tool_calls"] = got["tool_calls"]
                return message, "tool_calls" if it.finish_reason == "stop" else it.finish_reason
            return message, it.finish_reason

        if stream:
            def chunks():
                def chunk(delta, finish=None, lp=None):
                    return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                            "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}
                yield chunk({"role": "assistant", "content": ""})
                tools = reader() if parser is not None else None
                for text, tid, lp, top in it:
                    lpo = {"content": [entry(tid, lp, top)]} if logprobs and tid is not None else None
                    if tools is not None:  # text streams while it cannot begin a call
                        text = tools.push(text)
                    if text or lpo:
                        yield chunk({"content": text}, lp=lpo)
                if tools is None:
                    yield chunk({}, it.finish_reason)
                    return
                got = json.loads(tools.finish())
                message, finish = reply("", got)
                if message["content"]:
                    yield chunk({"content": message["content"]})
                for k, call in enumerate(message.get("tool_calls", [])):
                    yield chunk({"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"], "arguments": ""}}]})
                    args = call["function"]["arguments"]
                    for at in range(0, len(args), 16):
                        yield chunk({"tool_calls": [{"index": k, "function": {"arguments": args[at:at + 16]}}]})
                yield chunk({}, finish)
            return chunks()

        text, content_lps = "", []
        for piece, tid, lp, top in it:
            text += piece
            if logprobs and tid is not None:
                content_lps.append(entry(tid, lp, top))
        if parser is None:
            message, finish = {"role": "assistant", "content": text}, it.finish_reason
        else:
            tools = reader()
            shown = tools.push(text)
            message, finish = reply(shown, json.loads(tools.finish()))
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": message,
                         "logprobs": {"content": content_lps} if logprobs else None,
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": it.prompt_tokens, "completion_tokens": it.completion_tokens,
                      "total_tokens": it.prompt_tokens + it.completion_tokens,
                      "prompt_tokens_details": {"cached_tokens": it.cached_tokens}},
        }
