"""Record a pipeline's call schedule on `meta` tensors: no weights, no compute.

The pipeline runs with every component built on the meta device. Forward hooks on each
block and the pipeline's component hooks attribute every op to a unit call: FLOPs by op
class from `FlopCounterMode` (GEMM and conv FLOPs with fp32 inputs split off per op, through
`flop_registry`: they run at a fraction of the bf16 rate), bytes read plus written and kernels
launched by the other ops, and the peak of live tensor bytes (tracked through storage
reference counts). Denoising steps that
repeat a step already seen for the same denoiser are not run but copied, so a 40-step
request costs one step per denoiser to record.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from resbench.adapters import LoraAdapter
from resbench.models.base import REST, ModelSpec, ResidencyComponent, build_component, unit_infos
from resbench.pipeline import Pipeline, PipelineHooks, Request, validate_request
from resbench.schedule import MergeCall, Schedule, UnitCall

_GEMM = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear"}
_ATTENTION_PREFIX = "_scaled_dot_product"
_CONV = {"convolution", "conv2d", "conv3d", "_convolution"}
# Input dtypes that run on tensor cores at the profile's gemm/conv rates; any other floating
# dtype (fp32, fp64) is counted in the fp32 classes.
_LOW_PRECISION = {torch.bfloat16, torch.float16}
# Allocations without a kernel: they count as ops (as before) but move no bytes.
_NO_TRAFFIC = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


def _op_class(op: Any) -> str:
    name = str(op).split(".")[-1] if "." in str(op) else str(op)
    name = getattr(op, "__name__", name).split(".")[0]
    if name in _GEMM:
        return "gemm"
    if name.startswith(_ATTENTION_PREFIX) or "attention" in name:
        return "attention"
    if name in _CONV:
        return "conv"
    return "other"


def _input_dtype(args: Any) -> torch.dtype | None:
    """dtype of the first floating-point tensor among `args` (a GEMM's or conv's input)."""
    for a in tree_leaves(args):
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            return a.dtype
    return None


def _read_bytes(args: Any) -> int:
    """Bytes an op reads: each distinct input storage once, at most the view's own bytes
    (a slice reads its part; a broadcast view reads its small storage)."""
    seen: set[int] = set()
    total = 0
    for a in tree_leaves(args):
        if not isinstance(a, torch.Tensor):
            continue
        storage = a.untyped_storage()
        key = storage._cdata
        if key in seen:
            continue
        seen.add(key)
        total += min(storage.nbytes(), a.numel() * a.element_size())
    return total


class _MemoryMode(TorchDispatchMode):
    """Counts live tensor bytes (by storage), bytes read + written by non-matmul ops,
    kernels, and the FLOPs of GEMMs and convs whose inputs are fp32.

    `memory_bytes`: for every memory-bound op that writes a new tensor, its input storages
    (read) plus its new output storages (written). `fp32_flops`: per class (gemm, conv), the
    FLOPs `flop_registry` gives the op, when its first floating input is not bf16/fp16.
    """

    _SKIP = {"gemm", "attention", "conv"}

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.refs: dict[int, list[int]] = {}  # storage id → [tensor refs, bytes]
        self.memory_bytes = 0
        self.ops = 0
        self.fp32_flops: dict[str, int] = {"gemm": 0, "conv": 0}

    def _release(self, key: int) -> None:
        entry = self.refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        new_bytes = 0
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            entry = self.refs.get(key)
            if entry is None:
                nbytes = storage.nbytes()
                entry = self.refs[key] = [0, nbytes]
                self.live += nbytes
                new_bytes += nbytes
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        packet = func.overloadpacket
        cls = _op_class(packet)
        if cls in self.fp32_flops and packet in flop_registry:
            dtype = _input_dtype(args)
            if dtype is not None and dtype not in _LOW_PRECISION:
                self.fp32_flops[cls] += int(flop_registry[packet](*args, **(kwargs or {}),
                                                                  out_val=out))
        if new_bytes:
            self.ops += 1
            if cls not in self._SKIP and packet.__name__ not in _NO_TRAFFIC:
                self.memory_bytes += _read_bytes(args) + _read_bytes(kwargs) + new_bytes
            if self.live > self.peak:
                self.peak = self.live
        return out


@dataclasses.dataclass(frozen=True)
class _TensorSpec:
    """Shape and dtype of a cached block output (a pytree leaf)."""

    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclasses.dataclass
class _Open:
    component: str
    unit: str
    flops: dict[str, int]
    memory_bytes: int
    ops: int
    base_live: int
    peak: int
    position: int


class Recorder(PipelineHooks):
    """Pipeline hooks + block hooks that turn a meta run into `UnitCall`s."""

    def __init__(self, components: dict[str, nn.Module], cache_kinds: dict[str, bool] | None = None) -> None:
        self.calls: list[UnitCall | None] = []
        self.modules = dict(components)
        self.merges: list[MergeCall] = []
        # Blocks of stateless components (DiTs, text encoders) with the same structure and
        # input shapes cost the same: run the first, replay its costs for the others.
        self.cache: dict[tuple[Any, ...], tuple[UnitCall, Any]] = {}
        self._hit: tuple[UnitCall, Any] | None = None
        self.stage = ""
        self.step_index = -1
        self.flops = FlopCounterMode(display=False)
        self.mem = _MemoryMode()
        self.templates: dict[str, list[UnitCall]] = {}
        self._template_start: dict[str, int] = {}
        self._rest: _Open | None = None
        self._block: _Open | None = None
        self._component_live = 0
        self.state_bytes = 0
        self._handles = []
        for comp, module in components.items():
            if isinstance(module, ResidencyComponent):
                for path, blocks in module.block_lists():
                    for i, block in enumerate(blocks):
                        unit = f"{path}.{i}"
                        if (cache_kinds or {}).get(comp, False):
                            self._wrap_cached(block)
                        self._handles.append(block.register_forward_pre_hook(
                            lambda m, a, c=comp, u=unit: self._block_begin(c, u)))
                        self._handles.append(block.register_forward_hook(
                            lambda m, a, o, c=comp, u=unit: self._block_end(c, u, o)))

    def _wrap_cached(self, block: nn.Module) -> None:
        signature = (type(block).__qualname__,
                     tuple(tuple(p.shape) for p in block.parameters()))
        original = block.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            key = (signature, *[(tuple(a.shape), a.dtype) if isinstance(a, torch.Tensor)
                                else repr(a) for a in (*args, *kwargs.values())])
            self._key = key
            hit = self.cache.get(key)
            if hit is None:
                return original(*args, **kwargs)
            self._hit = hit
            return torch.utils._pytree.tree_map(
                lambda spec: torch.empty(spec.shape, dtype=spec.dtype, device="meta")
                if isinstance(spec, _TensorSpec) else spec, hit[1])

        block.forward = forward  # type: ignore[method-assign]

    # -- accumulators ------------------------------------------------------------------------
    def _flop_snapshot(self) -> dict[str, int]:
        """FLOPs so far by class; `gemm` and `conv` count bf16/fp16 inputs only, the fp32
        ones are in `gemm_fp32` and `conv_fp32`."""
        totals: dict[str, int] = defaultdict(int)
        for op, n in self.flops.flop_counts["Global"].items():
            totals[_op_class(op)] += n
        for cls, n in self.mem.fp32_flops.items():
            totals[cls] -= n
            totals[f"{cls}_fp32"] = n
        return totals

    def _open(self, component: str, unit: str, position: int) -> _Open:
        return _Open(component, unit, self._flop_snapshot(), self.mem.memory_bytes, self.mem.ops,
                     self._component_live, self.mem.live, position)

    def _accumulate(self, into: _Open, since: _Open) -> None:
        """Add the costs between `since` (a snapshot) and now to `into`."""
        now = self._flop_snapshot()
        for k in ("gemm", "attention", "conv", "gemm_fp32", "conv_fp32"):
            into.flops[k] = into.flops.get(k, 0) + now.get(k, 0) - since.flops.get(k, 0)
        into.memory_bytes += self.mem.memory_bytes - since.memory_bytes
        into.ops += self.mem.ops - since.ops
        into.peak = max(into.peak, self.mem.peak)

    def _make(self, o: _Open, index: int) -> UnitCall:
        return UnitCall(index=index, component=o.component, unit=o.unit, stage=self.stage,
                        step=self.step_index, gemm_flops=o.flops.get("gemm", 0),
                        attention_flops=o.flops.get("attention", 0),
                        conv_flops=o.flops.get("conv", 0), memory_bytes=o.memory_bytes,
                        op_count=o.ops, activation_bytes=max(0, o.peak - o.base_live),
                        gemm_fp32_flops=o.flops.get("gemm_fp32", 0),
                        conv_fp32_flops=o.flops.get("conv_fp32", 0))

    def _zero(self, component: str, unit: str, position: int) -> _Open:
        return _Open(component, unit, {}, 0, 0, self._component_live, self.mem.live, position)

    # -- component and block hooks ------------------------------------------------------------
    def component_enter(self, component: str) -> None:
        self._component_live = self.mem.live
        self.state_bytes = max(self.state_bytes, self.mem.live)
        self.calls.append(None)  # the rest call goes first; filled at exit
        self._rest = self._zero(component, REST, len(self.calls) - 1)
        self._since = self._open(component, REST, -1)
        self.mem.peak = self.mem.live

    def _block_begin(self, component: str, unit: str) -> None:
        assert self._rest is not None
        self._accumulate(self._rest, self._since)
        self.mem.peak = self.mem.live
        self._block = self._zero(component, unit, len(self.calls))
        self._block_since = self._open(component, unit, -1)

    def _block_end(self, component: str, unit: str, output: Any = None) -> None:
        assert self._block is not None
        if self._hit is not None:
            call = dataclasses.replace(self._hit[0], index=len(self.calls), component=component, unit=unit,
                                       stage=self.stage, step=self.step_index)
            self._hit = None
        else:
            self._accumulate(self._block, self._block_since)
            call = self._make(self._block, len(self.calls))
            key = getattr(self, "_key", None)
            if key is not None:
                spec = torch.utils._pytree.tree_map(
                    lambda t: _TensorSpec(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor)
                    else t, output)
                self.cache[key] = (call, spec)
        self._key = None
        self.calls.append(call)
        self._block = None
        self.mem.peak = self.mem.live
        self._since = self._open(component, REST, -1)

    def component_exit(self, component: str) -> None:
        assert self._rest is not None
        self._accumulate(self._rest, self._since)
        self.calls[self._rest.position] = self._make(self._rest, self._rest.position)
        self._rest = None

    def merge(self, component: str, adapter: LoraAdapter) -> bool:
        """Record the merge before the next call (its costs from the adapter's shapes); the
        meta weights are left as they are."""
        cost = adapter.merge_cost(self.modules[component])
        self.merges.append(MergeCall(index=len(self.merges), before_call=len(self.calls),
                                     component=component, adapter=adapter.name, stage=self.stage,
                                     **dataclasses.asdict(cost)))
        return True

    # -- stages and steps ----------------------------------------------------------------------
    def stage_enter(self, stage: str) -> None:
        self.stage = stage
        self.step_index = -1

    def stage_exit(self, stage: str) -> None:
        self._close_template()
        self.step_index = -1

    def step(self, step: int) -> None:
        self._close_template()
        self.step_index = step

    def repeat_step(self, step: int, denoiser: str) -> bool:
        if denoiser in self.templates or denoiser in self._template_start:
            return True
        self._template_start[denoiser] = len(self.calls)
        self._recording = denoiser
        return False

    def _close_template(self) -> None:
        name = getattr(self, "_recording", None)
        if name is not None:
            start = self._template_start[name]
            self.templates[name] = [c for c in self.calls[start:] if c is not None]
            self._recording = None

    def step_skipped(self, step: int, denoiser: str) -> None:
        self._close_template()
        for c in self.templates[denoiser]:
            self.calls.append(dataclasses.replace(c, index=len(self.calls), step=step))

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def build_meta_components(spec: ModelSpec, scale: float = 1.0,
                          dtype: torch.dtype | None = None) -> dict[str, nn.Module]:
    out = {}
    for c in spec.components:
        module = build_component(c, scale)
        out[c.name] = module.to(dtype) if dtype is not None else module
    return out


def record_schedule(spec: ModelSpec, request: Request, *, scale: float = 1.0,
                    dtype: torch.dtype | None = None) -> Schedule:
    """Record the unit-call schedule of `request` on `spec` at `scale` (no weights, no compute).

    `dtype` overrides the components' dtype (bf16 by default); it must match the run the
    schedule drives, since unit byte sizes come from it.
    """
    validate_request(spec, request)
    components = build_meta_components(spec, scale, dtype)
    pipe = Pipeline(spec, components, device="meta", dtype=dtype or torch.bfloat16, scale=scale)
    return record_pipeline(pipe, request, {c.name: c.kind for c in spec.components})


def record_pipeline(pipe: Pipeline, request: Request, kinds: Mapping[str, str]) -> Schedule:
    """Record `request` on `pipe`, a zoo `Pipeline` (or one with more stages) whose components
    are on meta; `kinds` maps each component to text_encoder | dit | vae."""
    components = pipe.components
    recorder = Recorder(components, {name: kind != "vae" for name, kind in kinds.items()})
    try:
        with recorder.flops, recorder.mem:
            pipe.run(request, hooks=recorder)
    finally:
        recorder.close()
    calls = tuple(c for c in recorder.calls if c is not None)
    units = tuple(u for name, m in components.items() for u in unit_infos(name, m))
    stage_order = tuple(dict.fromkeys(st.name for st in pipe.stages()))
    return Schedule(model=pipe.spec.name, scale=pipe.scale, request=dataclasses.asdict(request),
                    units=units, uses=tuple(pipe.uses()), stage_order=stage_order, calls=calls,
                    state_bytes=recorder.state_bytes,
                    component_kinds=tuple((name, kinds[name]) for name in components),
                    merges=tuple(recorder.merges))


def timed_record(spec: ModelSpec, request: Request, *, scale: float = 1.0) -> tuple[Schedule, float]:
    start = time.perf_counter()
    schedule = record_schedule(spec, request, scale=scale)
    return schedule, time.perf_counter() - start
