"""Model parallel placement: a hooked model's blocks across devices, with CPU/disk offload, via ``accelerate``.

:func:`infer_device_map` fills devices in the order the forward runs them — vision tower,
(InstructBLIP's Q-Former), projector (and the anyres ``image_newline``), token embedding, decoder blocks, final norm,
unembedding — so the vision tower and projector share a device with the first decoder blocks.
A :class:`~mmlens.components.block.Block` is never split. :func:`dispatch` attaches
``accelerate``'s hooks: an offloaded module's weights stay on the CPU (or on disk, in
``offload_folder``) and are brought to the execution device for its forward only. The decoder
loop moves the sequence it runs on to each block's device (:func:`execution_device`), so hooks,
caches, interventions and backward passes work unchanged; hooked activations live on the device
of the block that made them (``run_with_cache(..., device="cpu")`` gathers them on one).

Limits: the checkpoint is read through ``transformers`` into CPU memory once before it is
dispatched (so CPU memory must hold it, disk offload only bounds what stays resident), and an
analysis that combines activations of several layers must bring them to one device itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmlens.errors import MMLensError

NO_SPLIT = ["Block", "HookedVisionEncoder", "HookedQFormer"]
"""Module classes ``infer_auto_device_map`` keeps on one device."""

FORWARD_ORDER = ("vision_encoder", "qformer", "vision_projector", "image_newline", "embed", "blocks", "ln_final", "unembed")
"""Top-level children (and parameters) in the order the forward runs them."""


def execution_device(module: nn.Module) -> torch.device | None:
    """Where ``module`` computes: the execution device of the first ``accelerate`` hook on it or
    its submodules when dispatched (offloaded weights sit on ``meta`` in between), else the device
    of its first parameter; None for a module without parameters."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    param = next(module.parameters(), None)
    return None if param is None or param.device.type == "meta" else param.device


def _forward_ordered(model: nn.Module) -> nn.Module:
    """A view of ``model`` (same parameter objects, same names) whose children follow the forward.

    ``infer_auto_device_map`` fills devices in child order; the model registers its decoder
    before its vision tower, this view lists the vision tower first.
    """
    view = nn.Module()
    params = dict(model.named_parameters(recurse=False))
    children = dict(model.named_children())
    for name in FORWARD_ORDER:
        if name in params and params[name] is not None:
            view.register_parameter(name, params[name])
        elif name in children:
            view.add_module(name, children[name])
    missing = [n for n in params if n not in FORWARD_ORDER]
    missing += [n for n, child in children.items() if n not in FORWARD_ORDER and next(child.parameters(), None) is not None]
    if missing:
        raise MMLensError(f"placement does not know where {missing} go in the forward order: add them to FORWARD_ORDER.")
    return view


def infer_device_map(
    model: nn.Module,
    max_memory: Mapping[int | str, int | str] | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, int | str]:
    """``accelerate``'s automatic device map in forward order, whole blocks per device.

    Args:
        model: A :class:`~mmlens.HookedVLM` or :class:`~mmlens.models.HookedDecoder` (on any
            device, ``meta`` included).
        max_memory: Per device (GPU index, ``"cpu"``) the memory to fill, e.g. ``{0: "20GiB",
            "cpu": "60GiB"}``; what does not fit goes to ``"disk"``. Default: what is free.
        dtype: Count parameters in this dtype (default: as they are).

    Returns:
        Module name → device (GPU index, ``"cpu"`` or ``"disk"``).
    """
    from accelerate import infer_auto_device_map

    return dict(infer_auto_device_map(_forward_ordered(model), max_memory=dict(max_memory) if max_memory else None,
                                      no_split_module_classes=NO_SPLIT, dtype=dtype))


def dispatch(
    model: nn.Module,
    device_map: str | Mapping[str, int | str],
    *,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
) -> nn.Module:
    """Place ``model`` by ``device_map`` (``"auto"`` or a dict) with ``accelerate.dispatch_model``.

    Args:
        model: A hooked model whose weights are loaded (on the CPU).
        device_map: ``"auto"`` (:func:`infer_device_map` with ``max_memory``) or module name →
            device; names are the model's (``"vision_encoder"``, ``"blocks.3"``, ``"ln_final"``…)
            and must cover every parameter. ``"cpu"`` offloads to CPU memory when GPUs are used,
            ``"disk"`` to ``offload_folder``.
        max_memory: Memory per device for ``"auto"``.
        offload_folder: Where ``"disk"`` modules' weights are written (rewritten on every call).

    Returns:
        The model, dispatched, in eval mode (its attribute ``hf_device_map`` holds the map).

    Raises:
        MMLensError: an unknown ``device_map`` string, a map that misses or invents modules, or
            disk offload without ``offload_folder``.
    """
    from accelerate import dispatch_model
    from accelerate.utils import check_device_map, extract_submodules_state_dict, offload_state_dict

    if isinstance(device_map, str):
        if device_map != "auto":
            raise MMLensError(f"device_map takes 'auto' or a dict of module name -> device, not {device_map!r}.")
        device_map = infer_device_map(model, max_memory)
    device_map = dict(device_map)
    names = dict(model.named_modules())
    unknown = [k for k in device_map if k and k not in names and not hasattr(model, k)]
    if unknown:
        raise MMLensError(f"device_map names {unknown}, which are not modules of this model; use names such as "
                          f"'vision_encoder', 'embed', 'blocks.0', 'ln_final' (see model.named_modules()).")
    try:
        check_device_map(model, device_map)
    except ValueError as err:
        raise MMLensError(f"device_map does not place every parameter: {err} Add the missing modules.") from err
    disk = [name for name, device in device_map.items() if device == "disk"]
    if len(disk) == len(device_map):
        raise MMLensError("device_map sends the whole model to disk, leaving nowhere to compute: raise max_memory "
                          "(or map some modules to a GPU or 'cpu').")
    if disk:
        if offload_folder is None:
            raise MMLensError(f"device_map sends {disk} to disk: pass offload_folder=<directory> for their weights.")
        Path(offload_folder).mkdir(parents=True, exist_ok=True)
        # Written here, always: dispatch_model would silently reuse a stale index.json.
        offload_state_dict(str(offload_folder), extract_submodules_state_dict(model.state_dict(), disk))
    main = _main_device(device_map)
    model = dispatch_model(model.eval(), device_map, main_device=main,
                           offload_dir=None if offload_folder is None else str(offload_folder))
    return model


def _main_device(device_map: Mapping[str, Any]) -> int | str:
    """The device the forward starts on: the first computing (non-offload) device in forward order."""
    for name in sorted(device_map, key=_order_key):
        if device_map[name] not in ("cpu", "disk"):
            return device_map[name]
    return "cpu"


def _order_key(name: str) -> tuple[int, int]:
    head, _, rest = name.partition(".")
    rank = FORWARD_ORDER.index(head) if head in FORWARD_ORDER else len(FORWARD_ORDER)
    index = int(rest.split(".")[0]) if head == "blocks" and rest else 0
    return rank, index


def place(
    model: nn.Module,
    device: str | torch.device = "cpu",
    device_map: str | Mapping[str, int | str] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
    offload_folder: str | Path | None = None,
) -> nn.Module:
    """``model`` on ``device``, or dispatched by ``device_map`` (see :func:`dispatch`), in eval mode.

    Raises:
        MMLensError: ``max_memory`` or ``offload_folder`` without ``device_map``.
    """
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise MMLensError("max_memory and offload_folder only apply with device_map: pass device_map='auto'.")
        return model.to(device).eval()
    return dispatch(model, device_map, max_memory=max_memory, offload_folder=offload_folder)
