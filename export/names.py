"""Module paths of ONNX nodes: the names people know (``encoder.layer.3.output.dense``).

The dynamo exporter records, on every node, the stack of module scopes it was traced in
(``pkg.torch.onnx.name_scopes``, a Python list literal such as ``['', 'model', 'model.encoder', …]``).
The innermost scope is the module that emitted the node; our export wraps the Hugging Face model
as ``model``, so that prefix is dropped to give the model's own ``named_modules()`` paths.
"""
from __future__ import annotations

import ast

import onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
WRAPPER_PREFIX = "model."


def node_module(node: onnx.NodeProto) -> str | None:
    for prop in node.metadata_props:
        if prop.key == SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            last = str(scopes[-1]) if scopes else ""
            return last[len(WRAPPER_PREFIX):] if last.startswith(WRAPPER_PREFIX) else (last or None)
    return None


def module_names(model: onnx.ModelProto) -> dict[str, str]:
    """ONNX node name → module path, for the nodes whose exporter metadata names one."""
    out = {}
    for node in model.graph.node:
        module = node_module(node)
        if module:
            out[node.name] = module
    return out


def matches(module: str | None, pattern: str) -> bool:
    """Whether ``module`` is ``pattern`` or lies inside it (``encoder.layer.3`` covers its children)."""
    return module is not None and (module == pattern or module.startswith(pattern + "."))
