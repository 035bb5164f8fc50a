"""Run a TensorRT plan behind the :class:`runtimes.base.Runner` interface.

Place in the pipeline: validate and bench receive a ``TensorRTRunner("artifacts/x/model.plan")``
like any other candidate. On load it reads ``engine.json``, refuses a plan built for another
TensorRT version or GPU, and deserializes the plan. Device buffers are PyTorch CUDA tensors
(PyTorch is the CUDA allocator already in the environment; no pycuda / cuda-python needed).
Inputs are copied host->device and outputs device->host on every call, as for ONNX Runtime CUDA,
so latencies of the two are comparable.

TensorRT API used (10.x): Runtime.deserialize_cuda_engine, ICudaEngine.num_io_tensors /
get_tensor_name / get_tensor_mode / get_tensor_dtype, IExecutionContext.set_input_shape /
get_tensor_shape / set_tensor_address / execute_async_v3.

Not exercised in CI (no GPU there); written against the TensorRT 10 Python API docs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from modelpress.errors import BadInputError, ModelpressError
from modelpress.runtimes.base import Runner
from modelpress.runtimes.tensorrt.gpu import gpu_identity, require_tensorrt, require_torch_cuda
from modelpress.runtimes.tensorrt.metadata import (
    EngineMetadata,
    check_engine_compatible,
    engine_metadata_path,
    load_engine_metadata,
)


class TensorRTRunner(Runner):
    """A TensorRT engine (``.plan``) on CUDA device ``device``."""

    name = "tensorrt"

    def __init__(
        self,
        plan_path: str | Path,
        *,
        metadata_path: str | Path | None = None,
        device: int = 0,
        threads: int = 0,
        name: str | None = None,
    ) -> None:
        # threads: accepted like every runtime of the registry; a GPU engine has no CPU thread pool
        self.plan_path = Path(plan_path)
        self.metadata_path = Path(metadata_path) if metadata_path else engine_metadata_path(self.plan_path)
        self.device = device
        self.name = name or "tensorrt"
        self._meta: EngineMetadata | None = None
        self._state: _Loaded | None = None

    @property
    def metadata(self) -> EngineMetadata:
        """``engine.json``; read on first use (no GPU needed)."""
        if self._meta is None:
            self._meta = load_engine_metadata(self.metadata_path)
        return self._meta

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.metadata.inputs

    def _load(self) -> None:
        if not self.plan_path.is_file():
            raise BadInputError(f"{self.plan_path}: no such TensorRT plan; build it with `modelpress engine`")
        meta = self.metadata
        trt = require_tensorrt()
        torch = require_torch_cuda()
        check_engine_compatible(
            meta, plan_path=self.plan_path, tensorrt_version=trt.__version__, gpu=gpu_identity(self.device)
        )
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if engine is None:
            raise BadInputError(f"{self.plan_path}: TensorRT could not deserialize the plan (see its log above)")
        context = engine.create_execution_context()
        if context is None:
            raise ModelpressError(f"{self.plan_path}: TensorRT could not create an execution context")
        inputs, outputs, dtypes = [], [], {}
        for i in range(engine.num_io_tensors):
            tensor = engine.get_tensor_name(i)
            # numpy dtype of the binding; torch.from_numpy maps it to the matching torch dtype
            dtypes[tensor] = np.dtype(trt.nptype(engine.get_tensor_dtype(tensor)))
            (inputs if engine.get_tensor_mode(tensor) == trt.TensorIOMode.INPUT else outputs).append(tensor)
        with torch.cuda.device(self.device):
            stream = torch.cuda.Stream()
        self._state = _Loaded(
            torch=torch,
            runtime=runtime,
            engine=engine,
            context=context,
            stream=stream,
            inputs=tuple(inputs),
            outputs=tuple(outputs),
            dtypes=dtypes,
        )

    def close(self) -> None:
        # context before engine before runtime: TensorRT objects must die in reverse creation order
        if self._state is not None:
            state, self._state = self._state, None
            del state.context, state.engine, state.runtime

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._state is None:
            raise ModelpressError(f"{self.plan_path}: runner used outside its `with` block")
        s = self._state
        feed = self.select(feed)
        missing = [n for n in s.inputs if n not in feed]
        if missing:
            raise BadInputError(f"{self.plan_path}: feed lacks input(s) {', '.join(missing)}")
        torch, device = s.torch, f"cuda:{self.device}"
        keep_alive = []  # device tensors must outlive the asynchronous execution
        outputs = {}
        with torch.cuda.device(self.device), torch.cuda.stream(s.stream):
            for name in s.inputs:
                host = np.ascontiguousarray(feed[name], dtype=s.dtypes[name])
                if not s.context.set_input_shape(name, host.shape):
                    raise BadInputError(
                        f"{self.plan_path}: input '{name}' of shape {list(host.shape)} is "
                        f"outside the engine's profile {self.metadata.profile_range(name)}"
                    )
                tensor = torch.from_numpy(host).to(device)
                keep_alive.append(tensor)
                s.context.set_tensor_address(name, tensor.data_ptr())
            for name in s.outputs:
                shape = tuple(s.context.get_tensor_shape(name))
                dtype = torch.from_numpy(np.empty(0, dtype=s.dtypes[name])).dtype
                outputs[name] = torch.empty(shape, dtype=dtype, device=device)
                s.context.set_tensor_address(name, outputs[name].data_ptr())
            if not s.context.execute_async_v3(s.stream.cuda_stream):
                raise ModelpressError(f"{self.plan_path}: TensorRT execution failed (see its log above)")
            host_outputs = {name: t.to("cpu", non_blocking=False) for name, t in outputs.items()}
        s.stream.synchronize()
        return {name: t.numpy() for name, t in host_outputs.items()}


@dataclasses.dataclass(eq=False)
class _Loaded:
    """Objects alive between ``__enter__`` and ``close`` (mutable: ``close`` deletes them in order)."""

    torch: Any
    runtime: Any
    engine: Any
    context: Any
    stream: Any
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtypes: dict[str, np.dtype]
