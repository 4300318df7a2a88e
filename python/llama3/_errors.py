"""Exceptions raised by llama3. Every one is a ``Llama3Error``; those that mean a missing file
or a bad value are also ``FileNotFoundError`` / ``ValueError``, so ordinary ``except`` clauses
catch them."""


class Llama3Error(Exception):
    """Base class of every llama3 error."""


class ModelNotFoundError(Llama3Error, FileNotFoundError):
    """A model, adapter, tokenizer or data file does not exist."""


class InvalidArgumentError(Llama3Error, ValueError):
    """A bad argument: an out-of-range sampling value, a prompt that does not fit the context,
    a token id outside the vocabulary, a bad setting..."""


class ModelFormatError(Llama3Error, ValueError):
    """A file exists but is not a valid model: bad magic, truncated, missing tensor, wrong
    shape."""


class UnsupportedError(Llama3Error, ValueError):
    """A valid file that asks for something llama3 does not support (architecture, quant
    type...)."""


class TokenizerError(Llama3Error):
    """The tokenizer or chat template failed."""


__all__ = [
    "Llama3Error",
    "ModelNotFoundError",
    "InvalidArgumentError",
    "ModelFormatError",
    "UnsupportedError",
    "TokenizerError",
]
