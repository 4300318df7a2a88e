"""Training and the model tools from Python: the same code, settings, defaults and checks as
the ``llama3`` command line (``llama3 train --help`` lists every setting ``train`` takes)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _llama3

__all__ = ["train", "quantize", "merge", "export", "classify", "main"]


def _values(name: str, value: Any) -> Optional[List[str]]:
    """A setting's values as the CLI reads them; None: not given."""
    if value is None:
        return None
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [os.fspath(v) if hasattr(v, "__fspath__") else str(v) for v in value]
    if hasattr(value, "__fspath__"):
        return [os.fspath(value)]
    return [str(value)]


def train(
    data_path: Any = None,
    valid_data_path: Any = None,
    model_path: Any = None,
    num_gpus: Optional[int] = None,
    batch_size: Optional[int] = None,
    learning_rate: Optional[float] = None,
    num_epochs: Optional[float] = None,
    *,
    callback: Optional[Callable[[Dict[str, Any]], Any]] = None,
    **settings: Any,
) -> Dict[str, Any]:
    """Trains or fine-tunes a model, as ``llama3 train`` does with the same settings::

        llama3.train(data_path="data/train.txt", valid_data_path="data/valid.txt",
                     model_path="model", num_gpus=0, batch_size=8, learning_rate=1e-4,
                     num_epochs=3)

    Every flag of ``llama3 train`` is a keyword with its name (``seq_len=256``,
    ``init="smollm2"``, ``method="lora"``, ``resume=True``...), with the CLI's defaults and
    checks: without ``init`` a small preset is trained from scratch with the default model's
    tokenizer. A bad setting raises ``InvalidArgumentError``.

    A progress bar shows on a terminal (plain log lines otherwise). ``callback(event)`` gets
    each event as a dict with a ``kind``: ``start``, ``step`` (step, loss, lr, tokens/s...),
    ``eval``, ``saved``, ``stopped``. Ctrl-C (or an exception in the callback) stops the run
    at the end of its step with a resumable checkpoint, then raises; ``resume=True`` goes on.

    Returns the run's summary: ``run_dir``, ``steps``, ``tokens_seen``, ``final_loss``,
    ``final_eval``, ``best_eval``, ``seconds``, ``interrupted``, ``checkpoint``, ``model``.
    The run directory loads with ``Llama3(model_path=run_dir)``.
    """
    named = dict(data_path=data_path, valid_data_path=valid_data_path, model_path=model_path,
                 num_gpus=num_gpus, batch_size=batch_size, learning_rate=learning_rate,
                 num_epochs=num_epochs)
    named.update(settings)
    pairs: List[Tuple[str, List[str]]] = []
    for name, value in named.items():
        vals = _values(name, value)
        if vals is not None:
            pairs.append((name, vals))
    def forward(event_json: str) -> None:
        if callback is not None:
            callback(json.loads(event_json))

    return json.loads(_llama3.train(pairs, forward if callback is not None else None))


def _flags(settings: Dict[str, Any]) -> List[str]:
    out: List[str] = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            for v in value:
                out += [flag, os.fspath(v) if hasattr(v, "__fspath__") else str(v)]
        else:
            out += [flag, os.fspath(value) if hasattr(value, "__fspath__") else str(value)]
    return out


def _run(args: Sequence[Any]) -> None:
    code = _llama3.call_cli(["llama3", *[os.fspath(a) if hasattr(a, "__fspath__") else str(a) for a in args]])
    if code == 130:
        raise KeyboardInterrupt


def quantize(input: Any, output: Any, type: str = "q4_k", **settings: Any) -> None:
    """Converts an HF directory or a GGUF to a GGUF of one storage type (``f32``, ``f16``,
    ``bf16``, ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q4_k``, ``q5_k``, ``q6_k``),
    as ``llama3 quantize``."""
    _run(["quantize", input, output, "--type", type, *_flags(settings)])


def merge(base: Any, adapter: Any, output: Any, **settings: Any) -> None:
    """Folds a PEFT LoRA adapter (``PATH`` or ``PATH:SCALE``) into ``base``; writes an HF
    directory, or a GGUF when ``output`` ends in ``.gguf`` (``type="f16"``...), as
    ``llama3 merge``."""
    _run(["merge", base, adapter, output, *_flags(settings)])


def export(model_dir: Any, gguf: Any, type: str = "f16", **settings: Any) -> None:
    """Writes a model directory (e.g. a training run) as a GGUF for llama.cpp, as
    ``llama3 export``."""
    _run(["export", model_dir, "--gguf", gguf, "--type", type, *_flags(settings)])


def classify(command: str, **settings: Any) -> None:
    """``llama3 classify train|eval|predict`` with its flags as keywords
    (``data_path=...``, ``labels=[...]``...)."""
    if command not in ("train", "eval", "predict"):
        from ._errors import InvalidArgumentError

        raise InvalidArgumentError(f"classify command must be train, eval or predict, not {command!r}")
    _run(["classify", command, *_flags(settings)])


def main() -> None:
    """The ``llama3`` console script: the command line, run in-process."""
    sys.exit(_llama3.run_cli(["llama3", *sys.argv[1:]]))
