"""llama3: run, chat with, score and train Llama-family models from Python, on a Rust core.

    from llama3 import Llama3
    llama = Llama3()                      # the default model, fetched on first use
    print(llama.generate("The capital of France is", max_tokens=16))

``Llama3`` loads a GGUF file, a Hugging Face model directory or ``hf:owner/name``; its
``create_completion`` / ``create_chat_completion`` follow llama-cpp-python (``Llama`` is an
alias). ``llama3.train(...)`` trains with every setting of ``llama3 train``; ``quantize``,
``merge``, ``export`` and ``classify`` run those tools. Errors are :class:`Llama3Error`
subclasses. The same wheel installs the ``llama3`` command line.
"""

from ._api import Generation, Llama3
from ._errors import (
    InvalidArgumentError,
    Llama3Error,
    ModelFormatError,
    ModelNotFoundError,
    TokenizerError,
    UnsupportedError,
)
from ._llama3 import __version__
from ._tools import classify, export, merge, quantize, train

#: llama-cpp-python's name for the model class, so ``from llama3 import Llama`` works as
#: ``from llama_cpp import Llama`` does.
Llama = Llama3

__all__ = [
    "Llama3",
    "Llama",
    "Generation",
    "Llama3Error",
    "ModelNotFoundError",
    "InvalidArgumentError",
    "ModelFormatError",
    "UnsupportedError",
    "TokenizerError",
    "train",
    "quantize",
    "merge",
    "export",
    "classify",
    "__version__",
]
