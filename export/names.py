"""Module paths of ONNX nodes: the names people know (``encoder.layer.3.output.dense``).

The dynamo exporter records, on every node, the stack of module scopes it was traced in
(``pkg.torch.onnx.name_scopes``, a Python list literal such as ``['', 'model', 'model.encoder', …]``).
Beside it, ``pkg.torch.onnx.class_hierarchy`` gives each scope's class; the innermost scope whose
class is a module (not an aten op) is the module that emitted the node. Our export wraps the Hugging
Face model as ``model``, so that prefix is dropped to give the model's own ``named_modules()`` paths.
"""

from __future__ import annotations

import ast

import onnx

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"  # the module class (or op) of each scope
OP_PREFIXES = ("aten.", "prims.", "<built-in")
WRAPPER_PREFIX = "model."


def node_module(node: onnx.NodeProto) -> str | None:
    props = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(props.get(SCOPES_KEY, "[]"))
        classes = ast.literal_eval(props.get(CLASSES_KEY, "[]"))
    except (ValueError, SyntaxError):
        return None
    # the innermost scope that is a module (the last one is often the op itself: 'linear_5' of aten.linear)
    for scope, cls in reversed(list(zip(scopes, classes))):
        if scope and not str(cls).startswith(OP_PREFIXES):
            scope = str(scope)
            return scope[len(WRAPPER_PREFIX) :] if scope.startswith(WRAPPER_PREFIX) else scope
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
