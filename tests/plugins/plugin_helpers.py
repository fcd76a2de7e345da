"""What the plugin tests expect to find installed."""

from __future__ import annotations

#: Distribution under codecs/ -> the codecs its plugin registers.
PLUGINS = {
    "fma-connect-safetensors": ["safetensors"],
    "fma-connect-zstd": ["zstd+msgpack"],
    "fma-connect-quantize": ["quantize-f16", "quantize-int8", "quantize-int8-sym"],
    "fma-connect-example": ["example-raw"],
}
