"""The federation benchmark's schemes: a label and how each client gets its codec.

A scheme names an installed codec (``Scheme("zstd+msgpack", "zstd+msgpack")``) or gives a
factory that builds one codec object per client, for codecs with parameters or
per-client state (``Scheme("top-1%", lambda: SparseCodec(fraction=0.01))``): each client
gets a fresh object, so state such as an error-feedback residual is never shared.

On the command line (``--schemes``) each item is one of:

* a label of :data:`CATALOGUE` (the defaults and any preset added there);
* the name of an installed codec, e.g. ``zstd+quantize-f16``;
* ``LABEL=module:Callable(key=value, ...)``: a factory imported from ``module`` and
  called with literal keyword arguments (read with :func:`ast.literal_eval`, never
  evaluated as code), e.g. ``top-1%=fma_connect_sparse:SparseCodec(fraction=0.01)``.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..codecs.base import Codec
from ..codecs.context import ContextCodec
from ..codecs.sparse_delta import SparseDeltaCodec
from ..exceptions import ConfigurationError
from ..registry import CodecRegistry

__all__ = ["CATALOGUE", "DEFAULT_SCHEMES", "Scheme", "parse_schemes"]


@dataclass(frozen=True)
class Scheme:
    """One way for the federation's clients to encode what they send and receive.

    Attributes:
        label: What the report calls it.
        codec: An installed codec's name, or a factory called once per client.
        server_options: Extra keyword arguments of the reference server's
            :func:`~fma_connect.server.create_app` (e.g. ``registry=``), for codecs the
            default registry does not hold.
        model_options: Extra keyword arguments of the model's
            :meth:`~fma_connect.admin.AdminClient.create_model` (e.g.
            ``aggregate_fraction=``).
    """

    label: str
    codec: str | Callable[[], Codec | ContextCodec]
    server_options: Mapping[str, Any] = field(default_factory=dict)
    model_options: Mapping[str, Any] = field(default_factory=dict)

    def make_codec(self, registry: CodecRegistry) -> Codec | ContextCodec:
        """A codec for one client: the registered one, or a fresh object from the factory.

        Raises:
            UnknownCodecError: the named codec is not installed.
            ImportError: the factory needs a module that is not installed.
        """
        return registry.get(self.codec) if isinstance(self.codec, str) else self.codec()

    def unavailable(self, registry: CodecRegistry) -> str | None:
        """Why this scheme cannot run here (its codec is not installed), or None."""
        if isinstance(self.codec, str):
            if self.codec in registry:
                return None
            return (
                f"codec {self.codec!r} is not installed (`fma-connect codecs` lists those that are)"
            )
        try:
            codec = self.codec()
        except ImportError as exc:
            return f"its codec cannot be built: {exc}"
        # The server decodes uploads with its own registry: a codec it lacks would get 415s.
        server_registry = self.server_options.get("registry", registry)
        if codec.name not in server_registry:
            return (
                f"the server's registry has no codec {codec.name!r}; install its plugin or "
                "pass server_options={'registry': ...}"
            )
        return None


#: The schemes the benchmark runs by default: the baseline, the plugin codecs, the lossless
#: delta and settings of the sparse codec.
DEFAULT_SCHEMES = (
    Scheme("msgpack", "msgpack"),
    Scheme("zstd+msgpack", "zstd+msgpack"),
    Scheme("quantize-int8", "quantize-int8"),
    Scheme("zstd+quantize-int8-sym", "zstd+quantize-int8-sym"),
    Scheme("delta", "delta"),
    Scheme("sparse 1% ternary", lambda: SparseDeltaCodec(0.01, "ternary")),
    Scheme("sparse 2% ternary", lambda: SparseDeltaCodec(0.02, "ternary")),
    Scheme("sparse 5% ternary", lambda: SparseDeltaCodec(0.05, "ternary")),
    Scheme("sparse 1% float16", lambda: SparseDeltaCodec(0.01, "float16")),
    Scheme("sparse 5% float16", lambda: SparseDeltaCodec(0.05, "float16")),
    # 4-bit stochastic values (unseeded: each client's rounding is its own), and the same
    # with its positions and values blocks zstd-compressed.
    Scheme("sparse 5% q4", lambda: SparseDeltaCodec(0.05, "q4")),
    Scheme("sparse 5% q4, zstd", lambda: SparseDeltaCodec(0.05, "q4", compress=True)),
    Scheme(
        "sparse 1% ternary, no error feedback",
        lambda: SparseDeltaCodec(0.01, "ternary", error_feedback=False),
    ),
    # Sparse aggregates: each aggregate changes that share of the model, and clients
    # download it as the stored sparse step from the one they hold.
    Scheme("delta, aggregates 5%", "delta", model_options={"aggregate_fraction": 0.05}),
    *(
        Scheme(
            f"sparse 2% ternary, aggregates {percent}% {values}",
            lambda: SparseDeltaCodec(0.02, "ternary"),
            model_options={"aggregate_fraction": percent / 100, "aggregate_values": values},
        )
        for percent, values in ((5, "float16"), (5, "ternary"), (10, "ternary"), (2, "float16"))
    ),
    Scheme(
        "sparse 5% float16, aggregates 5% float16",
        lambda: SparseDeltaCodec(0.05, "float16"),
        model_options={"aggregate_fraction": 0.05, "aggregate_values": "float16"},
    ),
)

#: Schemes ``--schemes`` knows by label. New codecs with parameters get a preset here.
CATALOGUE: dict[str, Scheme] = {scheme.label: scheme for scheme in DEFAULT_SCHEMES}


def parse_schemes(items: Iterable[str]) -> list[Scheme]:
    """The schemes ``--schemes`` names (see the module notes for the forms).

    An item that is neither a preset nor ``LABEL=factory`` is taken as a codec name;
    whether it is installed is checked when the scheme runs, so one missing codec skips
    one scheme with a note rather than the whole run.

    Raises:
        ConfigurationError: an item is malformed, or two items share a label.
    """
    schemes: list[Scheme] = []
    for item in items:
        text = item.strip()
        if text in CATALOGUE:
            scheme = CATALOGUE[text]
        elif "=" in text and ":" in text.split("=", 1)[1]:
            label, spec = (part.strip() for part in text.split("=", 1))
            scheme = Scheme(label, _factory(spec))
        elif text:
            scheme = Scheme(text, text)
        else:
            raise ConfigurationError("--schemes: an empty scheme name")
        if any(s.label == scheme.label for s in schemes):
            raise ConfigurationError(f"--schemes: the label {scheme.label!r} is given twice")
        schemes.append(scheme)
    return schemes


def _factory(spec: str) -> Callable[[], Codec]:
    """``module:Callable(key=literal, ...)`` -> a function that imports and calls it."""
    module_name, _, call = spec.partition(":")
    try:
        tree = ast.parse(call.strip() if "(" in call else f"{call.strip()}()", mode="eval")
    except SyntaxError as exc:
        raise ConfigurationError(f"--schemes: cannot read {spec!r}: {exc.msg}") from None
    node = tree.body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
        raise ConfigurationError(
            f"--schemes: expected module:Callable(key=value, ...) with keyword arguments only, "
            f"got {spec!r}"
        )
    try:
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        raise ConfigurationError(
            f"--schemes: the arguments of {spec!r} must be literals (numbers, strings, ...)"
        ) from None
    name = node.func.id

    def make() -> Codec:
        module = importlib.import_module(module_name.strip())
        factory = getattr(module, name, None)
        if factory is None:  # as `from module import name` would say
            raise ImportError(f"cannot import name {name!r} from {module.__name__!r}")
        codec = factory(**kwargs)
        if not isinstance(codec, Codec):
            raise ConfigurationError(f"--schemes: {spec!r} made {codec!r}, which is not a codec")
        return codec

    return make
