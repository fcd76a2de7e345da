"""The ``torch`` adapter: tensors, parameters and ``nn.Module`` objects.

* A tensor is sent as its values: detached, moved to the CPU (CUDA or any other device),
  conjugation resolved, any strides. bfloat16 and float8 tensors, which numpy cannot
  hold, travel as ml_dtypes arrays, reinterpreted bit for bit through a same-width
  integer view. The dtype, device, ``requires_grad`` and whether it was an
  ``nn.Parameter`` are remembered; a restored tensor gets all four back.
* A module is sent as its ``state_dict()`` (parameters and buffers, named as torch
  names them). Restored without a template it comes back as a ``state_dict``
  (an ``OrderedDict`` of tensors on the module's devices), which
  ``module.load_state_dict`` accepts; restored into a module given as the template
  (``like=module``), the weights are loaded into that module, which is returned.

torch is imported only to handle objects that already come from it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..exceptions import EncodeError
from ..hookspecs import hookimpl
from .base import Branch, Leaf, loaded, ml_dtype

__all__ = ["TorchFramework"]

# torch dtypes numpy lacks -> (ml_dtypes name, the numpy integer of the same width).
# Signed integers, because torch converts int8/int16 to numpy in every 2.x release.
_VIA_ML_DTYPES = {
    "bfloat16": ("bfloat16", np.int16),
    "float8_e4m3fn": ("float8_e4m3fn", np.int8),
    "float8_e5m2": ("float8_e5m2", np.int8),
}


class TorchFramework:
    """PyTorch tensors, parameters and modules."""

    name = "torch"

    def claims(self, obj: Any) -> bool:
        """Claim tensors (parameters included) and modules."""
        torch = loaded("torch")
        return torch is not None and isinstance(obj, (torch.Tensor, torch.nn.Module))

    def flatten(self, obj: Any, name: str) -> Leaf | Branch:
        """A tensor is a leaf; a module is a branch of its ``state_dict()``."""
        torch = loaded("torch")
        assert torch is not None  # claims() found it
        if isinstance(obj, torch.nn.Module):
            return Branch(list(obj.state_dict().items()))
        dtype = str(obj.dtype).removeprefix("torch.")
        kind = "torch.nn.Parameter" if isinstance(obj, torch.nn.Parameter) else "torch.Tensor"
        meta = (dtype, str(obj.device), bool(obj.requires_grad))
        return Leaf(_to_numpy(torch, obj, dtype, name), kind, meta)

    def restore(self, array: np.ndarray, kind: str, meta: Any) -> Any:
        """Build a tensor (or parameter) with the sent dtype, device and ``requires_grad``."""
        import torch

        dtype, device, requires_grad = meta
        # torch.from_numpy shares memory and needs a writable, native, C-ordered array;
        # decoded arrays may be read-only views of the response body.
        if not (array.flags.writeable and array.flags.c_contiguous and array.dtype.isnative):
            array = np.array(array, dtype=array.dtype.newbyteorder("="), order="C")
        if dtype in _VIA_ML_DTYPES:
            bits = torch.from_numpy(array.view(_VIA_ML_DTYPES[dtype][1]))
            tensor = bits.view(getattr(torch, dtype))
        else:
            tensor = torch.from_numpy(array)
        if device != "cpu":
            tensor = tensor.to(device)
        if kind == "torch.nn.Parameter":
            return torch.nn.Parameter(tensor, requires_grad=requires_grad)
        return tensor.requires_grad_() if requires_grad else tensor

    def rebuild(self, meta: Any, items: list[tuple[str, Any]], target: Any) -> Any:
        """Return the state_dict, or load it into the template module and return that."""
        state = OrderedDict(items)
        if target is None:
            return state
        target.load_state_dict(state)
        return target


def _to_numpy(torch: Any, tensor: Any, dtype: str, name: str) -> np.ndarray:
    """Return the values of ``tensor`` as a numpy array (a view when it is on the CPU)."""
    where = f"torch tensor {name!r}"
    if tensor.layout != torch.strided:
        raise EncodeError(f"{where} is {tensor.layout}; send tensor.to_dense() instead")
    if tensor.is_quantized:
        raise EncodeError(f"{where} is quantized ({tensor.dtype}); send tensor.dequantize()")
    if tensor.device.type == "meta":
        raise EncodeError(f"{where} is on the meta device and has no values to send")
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.resolve_conj().resolve_neg()
    if dtype in _VIA_ML_DTYPES:
        ml_name, bits = _VIA_ML_DTYPES[dtype]
        target = ml_dtype(ml_name, where)
        integers: np.ndarray = tensor.view(getattr(torch, np.dtype(bits).name)).numpy()
        return integers.view(target)
    try:
        array: np.ndarray = tensor.numpy()
    except TypeError as exc:  # complex32 and other dtypes numpy has no counterpart of
        raise EncodeError(
            f"{where} has dtype {tensor.dtype}, which cannot be sent; convert it first "
            f"(e.g. tensor.to(torch.float32)): {exc}"
        ) from exc
    return array


@hookimpl
def fma_connect_register_frameworks(registry: Any) -> None:
    """Register the ``torch`` adapter."""
    registry.add(TorchFramework())
