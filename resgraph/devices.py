"""Where weights go: a device named by the CLI's `--device` or Python's `device=`, read and checked once.

torch's own refusals name its whole backend list ("Expected one of cpu, cuda, ipu, xpu, mkldnn, ...
device type at start of device string") or only the string ("Invalid device string: 'cuda:x'"),
and it accepts `cpu:1`, which allocates on the one CPU device as if the index were not there. Here
each malformed name is refused saying which part is wrong and the forms accepted; a well-formed one
is then tried, so a device this machine lacks is refused before a build starts, not inside torch.

>>> device_problem("cuda:x")
"the index after ':' must be a whole number from 0 to 127 (cuda:0, cuda:1, ...), not 'x'"
>>> device_problem("cuda:1") is None
True
"""

from __future__ import annotations

import re
import warnings

import torch

from .errors import UsageError, shortened
from .suggest import closest

__all__ = ["ACCEPTED", "MAX_INDEX", "Device", "device_problem", "refuse_seed_without_weights", "target_device"]

Device = torch.device | str | int  # what torch.device() accepts

# What every message about a device name offers.
ACCEPTED = "cpu, cuda, cuda:N for the GPU of index N (from 0), meta to allocate nothing, or another backend (mps, xpu)"
# Names offered as a correction (torch decides what is valid; these are only the likely meant ones).
_COMMON = ("cpu", "cuda", "meta", "mps", "xpu", "hip", "xla", "hpu", "mtia")
_MEANT = {"gpu": "cuda"}  # a word that is no device type, for the one it means
_NAME = re.compile(r"(?P<type>[^:]*)(?::(?P<index>.*))?", re.DOTALL)
_SINGLE = ("cpu", "meta")  # device types with one device: no index but 0 names one
# The largest device index torch keeps: it stores one in 8 bits (c10::DeviceIndex), and a larger one
# wraps without a word (`cuda:128` is cuda:-128, `cuda:256` the first GPU, cuda:0).
MAX_INDEX = 127


def device_problem(name: str) -> str | None:
    """What is wrong with device name `name`, or None when it is well formed (`TYPE` or `TYPE:N`)."""
    parts = _NAME.fullmatch(name)
    assert parts is not None  # (the pattern matches every string)
    kind, index = parts["type"], parts["index"]
    if not kind:
        return "no device type named" if name else "the name is empty"
    if not _known_type(kind):
        meant = _MEANT.get(kind.lower()) or closest(kind, _COMMON)
        return f"unknown device type {_echoed(kind)}" + (f"; did you mean {meant!r}?" if meant else "")
    if index is None:
        return None
    if not re.fullmatch(r"0|[1-9][0-9]*", index) or len(index) > 3 or int(index) > MAX_INDEX:
        return (f"the index after ':' must be a whole number from 0 to {MAX_INDEX} ({kind}:0, {kind}:1, ...), "
                f"not {_echoed(index)}")
    if kind in _SINGLE and index != "0":
        return f"there is one {kind} device, with no index but 0: name it {kind}"
    return None


def _echoed(part: object) -> str:
    """A device name or part of one as a message quotes it: a long one cut, so that what is said of it
    survives the cut of the whole message (`errors.shortened`), which keeps its start and end."""
    return shortened(repr(part), 60)


def _known_type(kind: str) -> bool:
    """Whether torch knows device type `kind` (this build need not have its backend)."""
    try:
        _torch_device(kind)
    except (RuntimeError, ValueError):
        return False
    return True


def _torch_device(device: Device) -> torch.device:
    """`torch.device(device)`, without the warnings torch gives of retired names (mkldnn): whether the
    device can be used is said by trying to allocate there, in `target_device`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.device(device)


def target_device(device: Device | None, named: str | None = None) -> torch.device | None:
    """The torch.device `device` names (None: the default device), checked to be one this machine
    can allocate on, so that a build is refused before it starts instead of failing in torch.

    Args:
        named: how a message names the device (the CLI: `--device cuda`); default `device='cuda'`.
    Raises:
        UsageError: a malformed name (`gpu`, `cuda:x`, `cpu:1`, `cuda:128`) or value (`device=1.5`), or a device
            this machine lacks (`cuda` on a CPU-only torch, `cuda:7` with one GPU, a backend this torch
            was not built with).
    """
    if device is None:
        return None
    named = named if named is not None else f"device={_echoed(device)}"
    target = _parsed(device, named)
    try:  # a well-formed device this machine lacks
        if target is None:  # (an index torch maps to no device here: `device=0` without an accelerator)
            raise RuntimeError("it has no accelerator")
        torch.empty(0, device=target)
    except (AssertionError, RuntimeError, ImportError) as exc:  # torch's own wording: its first sentence says why
        reason = (str(exc).strip().splitlines() or ["unavailable"])[0].split(". ")[0].rstrip(".")
        if "INTERNAL ASSERT" in reason or isinstance(exc, ImportError):  # (torch's wording for a device it lacks)
            reason = "this torch has no backend for it"
        raise UsageError(f"{named}: this machine cannot allocate there: {reason} "
                         "(e.g. cpu, or meta to allocate nothing)") from None
    return target


def refuse_seed_without_weights(seed: int | None, target: torch.device | None, where: str, *,
                                flags: bool = False) -> None:
    """Refuse a seed for a build on meta, which allocates no weights: the seed would seed nothing,
    ignored without a word. The one home of this decision: `compile_model` asks it for Python's
    `build(seed=..., device=...)`, and the command line for `--seed` with `--device`, before it reads
    the spec; only the names in the message differ.

    >>> refuse_seed_without_weights(0, torch.device("cpu"), "device='cpu'")  # weights to seed: nothing said
    >>> refuse_seed_without_weights(0, torch.device("meta"), "--device meta", flags=True)
    Traceback (most recent call last):
    resgraph.errors.UsageError: --seed chooses the initial weights, and --device meta allocates none: drop --seed, \
or build on a real device

    Args:
        target: where the build allocates (`target_device`'s answer); None: torch's default device.
        where: how the message names the device (`device='meta'`, `--device meta`).
        flags: name the command line's flags (`--seed`), whose build has no `materialize` step to
            offer, instead of Python's keywords (`seed=0`).
    Raises:
        UsageError: `seed` is given and the build allocates on meta.
    """
    if seed is None or (target if target is not None else torch.get_default_device()).type != "meta":
        return
    if flags:
        raise UsageError(f"--seed chooses the initial weights, and {where} allocates none: drop --seed, or build on "
                         "a real device")
    raise UsageError(f"seed={seed!r} chooses the initial weights, and {where} allocates none: drop seed, or give it "
                     f"to resgraph.materialize(model, seed={seed!r}), which allocates and initialises them")


def _parsed(device: Device, named: str) -> torch.device | None:
    """`device` as a torch.device (None: a well-formed index torch cannot map to a device here), or a
    UsageError saying what is wrong with it and what is accepted."""
    if isinstance(device, torch.device):
        problem = device_problem(str(device))
    elif isinstance(device, str):
        problem = device_problem(device)
    elif isinstance(device, int) and not isinstance(device, bool):  # torch's shorthand for an accelerator's index
        problem = None if 0 <= device <= MAX_INDEX else f"a device index is a whole number from 0 to {MAX_INDEX}"
    else:
        problem = f"a device is named by a string, a torch.device or an index, not a {type(device).__name__}"
    if problem is not None:
        raise UsageError(f"{named}: {problem} (accepted: {ACCEPTED})")
    try:
        return _torch_device(device)
    except RuntimeError:
        return None
