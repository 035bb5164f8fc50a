"""The one ONNX graph editor quantization uses: insert nodes before others, replace nodes, add
initializers, and drop the weights no node reads any more, on a copy of the model.

Q/DQ insertion, ONNX Runtime's fused int8 ops and SmoothQuant's ``Mul`` nodes are all "put these
nodes before that one, maybe remove it, add constants": the bookkeeping (topological order kept
by inserting at the consumer's position, initializers pruned) lives here once.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from modelpress.fileio import copy_model
from modelpress.quantize.offload import DiskWeights


class GraphEditor:
    """``weights``: where the model's weights are when it is offloaded (``offload``): read from there,
    and every new or replaced large weight is written there too (:meth:`DiskWeights.reload` brings
    back what the finished graph reads)."""

    def __init__(self, model: onnx.ModelProto, weights: DiskWeights | None = None) -> None:
        self.model = copy_model(model)  # past 2 GiB too
        self.weights = weights
        self.graph = self.model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.nodes = {n.name: n for n in self.graph.node}
        self.position = {n.name: i for i, n in enumerate(self.graph.node)}
        self._before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self._removed: set[int] = set()  # id() of removed nodes
        self._maybe_unused: set[str] = set()  # initializers to drop if nothing reads them at the end
        self._consumers: dict[str, list[onnx.NodeProto]] | None = None

    def consumers(self, tensor: str) -> list[onnx.NodeProto]:
        if self._consumers is None:
            self._consumers = defaultdict(list)
            for n in self.graph.node:
                for name in n.input:
                    self._consumers[name].append(n)
        return self._consumers.get(tensor, [])

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in {o.name for o in self.graph.output}

    def array(self, name: str) -> np.ndarray:
        tensor = self.inits[name]
        return self.weights.array(tensor) if self.weights is not None else numpy_helper.to_array(tensor)

    def add_initializer(self, value: np.ndarray | onnx.TensorProto, name: str | None = None) -> str:
        tensor = value if isinstance(value, onnx.TensorProto) else self._tensor(value, name)  # type: ignore[arg-type]
        self.graph.initializer.append(tensor)
        self.inits[tensor.name] = self.graph.initializer[-1]
        return tensor.name

    def replace_initializer(self, name: str, value: np.ndarray) -> None:
        self.inits[name].CopyFrom(self._tensor(value, name))

    def _tensor(self, value: np.ndarray, name: str) -> onnx.TensorProto:
        """``value`` as an initializer: on disk when the model's weights are (and it is large)."""
        return self.weights.tensor(value, name) if self.weights is not None else numpy_helper.from_array(value, name)

    def insert_before(self, node_name: str, *nodes: onnx.NodeProto) -> None:
        self._before[self.position[node_name]].extend(nodes)

    def insert_before_index(self, index: int, *nodes: onnx.NodeProto) -> None:
        self._before[index].extend(nodes)

    def remove(self, node: onnx.NodeProto) -> None:
        self._removed.add(id(node))

    def drop_if_unused(self, initializer: str) -> None:
        self._maybe_unused.add(initializer)

    def finish(self) -> onnx.ModelProto:
        ordered: list[onnx.NodeProto] = []
        for idx, node in enumerate(self.graph.node):
            ordered.extend(self._before.get(idx, ()))
            if id(node) not in self._removed:
                ordered.append(node)
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        used = {name for n in self.graph.node for name in n.input}
        kept = [i for i in self.graph.initializer if i.name not in self._maybe_unused or i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(kept)
        return self.model
