"""fx graph -> IR: `Converter` walks the graph trace.py recorded, node by node, turning each op
into an IR node with the tables of convert.py (and tokens.py for attention and token layouts),
binding every node to the parameters it reads; `check_shapes` then holds the IR's inferred
shapes against those torch produced on the example input."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from torch import fx, nn

from netopt.bridge import additive, constant, separable, talking, tokens, window_maps
from netopt.bridge.concrete import value_kind
from netopt.bridge.convert import (
    CHANNELS_LAST,
    METHODS,
    PIECES,
    SHAPE,
    SHUFFLE,
    SUMMED,
    Converted,
    function_converter,
    leaf_converter,
    param_path,
    pieces,
    shuffle_stage,
    sum_stage,
)
from netopt.bridge.fxmeta import FED, MACS, MULTI, STAND_IN
from netopt.bridge.heads import STAND_INS
from netopt.errors import IRError, TraceError, UnsupportedOpError
from netopt.ir import INPUT, Network, Node, OpKind
from netopt.ir.ops import OpaqueAttrs

__all__ = ["Converter", "Opaque", "check_shapes", "get_attr", "is_opaque"]

Opaque = str | type[nn.Module]
"""A submodule to keep whole: its qualified name, or a class."""


def get_attr(root: nn.Module, path: str) -> Any:
    """The submodule, parameter or buffer at dotted `path` under `root`."""
    value: Any = root
    for atom in path.split("."):
        value = getattr(value, atom)
    return value


def is_opaque(m: nn.Module, qualname: str, opaque: tuple[Opaque, ...]) -> bool:
    """Named in opaque=[...], or a routed head's decoder in a network netopt built (traced again)."""
    return isinstance(m, STAND_INS) or any(o == qualname if isinstance(o, str) else isinstance(m, o) for o in opaque)


class Converter:
    """Walks the fx graph, producing IR nodes and the binding to the module's parameters."""

    def __init__(self, gm: fx.GraphModule, root: nn.Module, opaque: tuple[Opaque, ...]) -> None:
        self.gm = gm
        self.root = root
        self.opaque = opaque
        self.names: dict[fx.Node, str] = {}
        self.nodes: list[Node] = []
        self.outputs: list[str] = []
        self.binding: dict[str, str] = {}
        self.opaque_modules: dict[str, nn.Module] = {}
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.inputs_seen = 0

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self._placeholder(node)
        elif node.op == "output":
            self._output(node)
        elif node.op == "get_attr" or param_path(node) is not None:
            return  # a parameter: the op that reads it decides (batch_norm, conv2d, layer scale, ...)
        elif (stage := shuffle_stage(node)) is not None:
            node.meta[SHUFFLE] = stage  # the view and transpose of a channel shuffle: converted at its end
        elif (summed := sum_stage(node)) is not None:
            node.meta[SUMMED] = summed  # torch.stack(xs) before .sum(0), or a partial sum(xs): one ADD at its end
        elif (add_step := additive.stage(node)) is not None:
            node.meta[additive.STAGE] = add_step  # a step of additive attention (additive.py)
        elif (sep_step := separable.stage(node)) is not None:
            node.meta[separable.STAGE] = sep_step  # MobileViT v2's patches or separable attention (separable.py)
        elif (step := talking.stage(node) or tokens.stage(node)) is not None:
            node.meta[tokens.STAGE] = step  # a step of attention (talking.py first) or of a token layout (tokens.py)
        elif MULTI in node.meta and (bounds := pieces(node)) is not None:
            node.meta[PIECES] = bounds  # split/chunk: each getitem of it becomes a slice
        elif SHAPE in node.meta or MULTI in node.meta:
            self._tensor_op(node)
        # other nodes compute Python values (x.size(0), ...) that only feed reshapes

    def _placeholder(self, node: fx.Node) -> None:
        self.inputs_seen += 1
        if self.inputs_seen > 1:
            raise UnsupportedOpError(
                f"the model takes more than one input ({node.name!r}); netopt adapts "
                "single-input networks: wrap the model so that it takes one tensor"
            )
        self.names[node] = INPUT

    def _output(self, node: fx.Node) -> None:
        value = node.args[0]
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            if not isinstance(v, fx.Node) or v not in self.names:
                raise UnsupportedOpError(
                    f"the model returns {type(v).__name__} values that are not traced tensors; "
                    "return a tensor (or a tuple of tensors)"
                )
            self.outputs.append(self.names[v])

    def _tensor_op(self, node: fx.Node) -> None:
        kind, attrs, inputs = self._convert(node)
        kind, attrs = window_maps.follow(node, kind, attrs, inputs)  # windows made the batch
        self._constants(inputs)
        params = [p for i in inputs if i not in self.names and (p := param_path(i)) is not None]
        if params and params[0].startswith("_tensor_constant"):  # fx's name for a tensor made in forward
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) reads {params[0]!r}, a constant tensor made in forward (from "
                f"torch.arange, zeros, ...), which the IR has no input for; {self._keep_whole(node)}"
            )
        if params:
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) reads the tensor {params[0]!r} directly, which the IR "
                f"cannot shrink; pass opaque=[{_enclosing(node)!r}] to keep the module that does it whole"
            )
        missing = [i for i in inputs if not isinstance(i, fx.Node) or i not in self.names]
        if missing:
            raise UnsupportedOpError(
                f"node {node.name!r} ({kind.value}) reads {missing}, which are not traced "
                f"tensors of this model; pass opaque=[{_enclosing(node)!r}] to keep it whole"
            )
        self._follow_layout(node, kind, inputs)
        name = self._name(node)
        self.names[node] = name
        self.nodes.append(Node(name, kind, tuple(self.names[i] for i in inputs), attrs))
        if node.op != "call_module" and kind in BOUND:
            self.binding[name] = self._bound(node, kind)
        if tokens.BOUND_TO in node.meta:  # an attention's relative position bias
            self.binding[name] = node.meta[tokens.BOUND_TO]

    def _constants(self, inputs: tuple[fx.Node, ...]) -> None:
        """A map made in forward from shapes alone that an op reads as its input: a CONSTANT node (its
        input, the last node so far, only gives the batch), bound to fx's copy of it (netopt.bridge.constant)."""
        for i in inputs:
            if i not in self.names and (made := constant.constant_attrs(i)) is not None:
                self.names[i] = constant.constant_name(sum(n.op is OpKind.CONSTANT for n in self.nodes))
                self.nodes.append(Node(self.names[i], OpKind.CONSTANT, (self.nodes[-1].name if self.nodes else INPUT,),
                                       made))
                self.binding[self.names[i]] = str(i.target)

    def _bound(self, node: fx.Node, kind: OpKind) -> str:
        """The module holding a functional op's weights (SCALE: the parameter), checked."""
        paths = [p for a in (*node.args, *node.kwargs.values()) if (p := param_path(a)) is not None]
        if kind is OpKind.SCALE:
            return self._scale_parameter(node, paths[0])
        if kind in (OpKind.CLASS_TOKEN, OpKind.POS_EMBED):
            return tokens.bound_parameter(node)
        owner_path = paths[0].rpartition(".")[0]
        owner = self.root.get_submodule(owner_path)
        need = BOUND[kind]
        if need is not None and not isinstance(owner, need):
            raise UnsupportedOpError(
                f"node {node.name!r} ({kind.value}) reads the weights of {owner_path!r}, a {type(owner).__name__}; "
                f"netopt slices such weights only from a {' or '.join(t.__name__ for t in need)}: "
                f"pass opaque=[{owner_path!r}]"
            )
        groups = _arg_groups(node)
        if kind is OpKind.CONV2D and isinstance(owner, nn.Conv2d) and groups != owner.groups:
            raise UnsupportedOpError(
                f"node {node.name!r} calls conv2d with groups={groups} on {owner_path!r} of groups={owner.groups}; "
                f"pass opaque=[{owner_path!r}]"
            )
        return owner_path

    def _keep_whole(self, node: fx.Node) -> str:
        """The fix for a constant input: keep whole the innermost module around `node` (not the one
        it calls) that takes a traced tensor, so that the block has an input in the IR."""
        stack = node.meta.get("nn_module_stack") or {}
        fed = self.gm.meta.get(FED, {})
        paths = [v[0] for v in stack.values() if v and v[0] and v[0] != node.target and fed.get(v[0])]
        if paths:
            return f"pass opaque=[{paths[-1]!r}] to keep the module that makes and uses it whole"
        return ("no submodule around it takes the model's tensors: move the code that makes and uses it into "
                "one module that does, and pass that module in opaque=[...]")

    def _scale_parameter(self, node: fx.Node, path: str) -> str:
        """A per-channel multiplier netopt slices must be a parameter (a buffer or a constant made in
        forward, `x * torch.ones(1, C, 1, 1)`, is not one the materialized layer can hold)."""
        if not isinstance(get_attr(self.root, path), nn.Parameter):
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) multiplies by {path!r}, a tensor that is no parameter (a buffer, "
                f"or a constant made in forward); netopt scales channels by parameters only: pass "
                f"opaque=[{_enclosing(node)!r}] to keep the module that does it whole"
            )
        return path

    def _follow_layout(self, node: fx.Node, kind: OpKind, inputs: tuple[fx.Node, ...]) -> None:
        """Propagate channels-last through the ops that mean the same in NCHW; refuse the rest."""
        tokens.check_heads(node, kind, inputs)
        if CHANNELS_LAST in node.meta:
            return  # a permute decided
        last = [bool(i.meta.get(CHANNELS_LAST)) for i in inputs]
        if not any(last):
            return
        if not all(last) or kind not in CHANNELS_LAST_OK:
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) works on a channels-last tensor (after permute(0, 2, 3, 1)); "
                f"netopt models only {sorted(k.value for k in CHANNELS_LAST_OK)} there: pass "
                f"opaque=[{_enclosing(node)!r}] to keep the block whole"
            )
        node.meta[CHANNELS_LAST] = True

    def _convert(self, node: fx.Node) -> Converted:
        try:
            return self._convert_once(node)
        except UnsupportedOpError as exc:
            if "opaque=[" in str(exc):
                raise
            where = _enclosing(node)
            raise UnsupportedOpError(
                f"{exc}: pass opaque=[{where!r}] to keep the module that does it whole at full width"
            ) from exc

    def _convert_once(self, node: fx.Node) -> Converted:
        if node.op == "call_module":
            return self._module(node)
        if (found := additive.convert(node)) is not None:
            return found
        if (found := separable.convert(node)) is not None:
            return found
        if (found := talking.convert(node)) is not None:
            return found
        if (found := tokens.convert(node)) is not None:
            return found
        converter = function_converter(node.target) if node.op == "call_function" else METHODS.get(str(node.target))
        converter = converter or tokens.FUNCTIONS.get(node.target) or tokens.METHODS.get(str(node.target))
        if converter is None:
            what = getattr(node.target, "__name__", str(node.target))
            raise UnsupportedOpError(
                f"node {node.name!r} calls {what!r}, an operation the IR does not model; pass "
                f"opaque=[{_enclosing(node)!r}] to keep the module that calls it whole at full width"
            )
        return converter(node)  # type: ignore[no-any-return]

    def _module(self, node: fx.Node) -> Converted:
        target = str(node.target)
        if STAND_IN in node.meta:
            return self._opaque(node, target, node.meta[STAND_IN])
        module = self.gm.get_submodule(target)
        if is_opaque(module, target, self.opaque):
            return self._opaque(node, target, module)
        converter = leaf_converter(module)
        if converter is None:
            raise UnsupportedOpError(
                f"node {node.name!r} calls {target!r}, a {type(module).__name__}, which the IR "
                f"does not model; pass opaque=[{target!r}] to keep it whole at full width"
            )
        if self.calls[target] > 1 and any(True for _ in module.parameters()):
            raise UnsupportedOpError(
                f"module {target!r} ({type(module).__name__}) is called {self.calls[target]} times: "
                "shared weights cannot be pruned per call; mark it opaque or unshare it"
            )
        kind, attrs, inputs = converter(node, module)
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            self.binding[self._name(node)] = target
        return kind, attrs, inputs

    def _opaque(self, node: fx.Node, target: str, module: nn.Module) -> Converted:
        if SHAPE not in node.meta:
            raise UnsupportedOpError(
                f"opaque block {target!r} ({type(module).__name__}) returns {value_kind(node)}, not one tensor; "
                "netopt keeps whole only a block that returns one tensor: take it out of opaque=[...] and name "
                "the submodules inside it that the IR cannot model"
            )
        out = node.meta[SHAPE]
        attrs = OpaqueAttrs(
            module_type=type(module).__qualname__, out_shape=tuple(out[1:]),
            params=sum(p.numel() for p in module.parameters()), macs=int(node.meta.get(MACS, 0)),
        )
        self.opaque_modules[self._name(node)] = module
        self.binding[self._name(node)] = target
        inputs = tuple(a for a in node.args if isinstance(a, fx.Node))
        return OpKind.OPAQUE, attrs, inputs

    def _name(self, node: fx.Node) -> str:
        """The module's qualified name when it is called once, else the fx node's name (with a '_'
        where it is the input's or an nn.Module attribute's, `to`: a built network's submodule may not shadow it)."""
        if STAND_IN in node.meta:  # beside its branches ('model.22.cv2...'), not above: a built network
            return f"{node.target}.decode"  # nests its submodules by name, and would put them inside the decoder
        if node.op == "call_module" and self.calls[node.target] == 1:
            return str(node.target)
        return f"{node.name}_" if node.name == INPUT or hasattr(nn.Module, node.name) else node.name

    def _live_nodes(self) -> list[Node]:
        """The nodes some output depends on: fx keeps results nothing reads (an unused piece of
        a split, a projection a model computes and drops); the network does not."""
        used = set(self.outputs)
        for node in reversed(self.nodes):
            if node.name in used:
                used.update(node.inputs)
        for name in [n for n in self.binding if n not in used]:
            del self.binding[name]
        self.opaque_modules = {k: v for k, v in self.opaque_modules.items() if k in used}
        return [n for n in self.nodes if n.name in used]

    def network(self, input_shape: tuple[int, ...], step: int) -> Network:
        self.nodes = self._live_nodes()
        names = Counter(n.name for n in self.nodes)
        clash = [n for n, c in names.items() if c > 1]
        if clash:
            raise TraceError(f"node names {clash} clash after tracing; rename the submodules")
        try:
            return Network(tuple(self.nodes), input_shape, tuple(self.outputs), step=step)
        except IRError as exc:
            raise TraceError(f"the traced model is not a valid network: {exc}") from exc


BOUND: dict[OpKind, tuple[type[nn.Module], ...] | None] = {
    OpKind.BATCHNORM: (nn.modules.batchnorm._BatchNorm,),
    OpKind.CONV2D: (nn.Conv2d, nn.Linear),  # a Linear over channels-last maps is a 1x1 conv
    OpKind.LINEAR: (nn.Linear,),
    OpKind.LAYERNORM: (nn.LayerNorm,),
    OpKind.SCALE: None,
    OpKind.GROUP_NORM: (nn.GroupNorm,),
    OpKind.CLASS_TOKEN: None,
    OpKind.POS_EMBED: None,
}
"""Functional ops that read parameters, bound to the module that holds them (SCALE: the
parameter itself), and the module type their weights are sliced from."""


def _arg_groups(node: fx.Node) -> int:
    return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))  # type: ignore[arg-type]

CHANNELS_LAST_OK = frozenset({
    OpKind.CONV2D, OpKind.LAYERNORM, OpKind.SCALE, OpKind.ADD, OpKind.MUL, OpKind.DROPOUT, OpKind.DROPPATH,
    OpKind.IDENTITY, OpKind.RELU, OpKind.RELU6, OpKind.GELU, OpKind.SILU, OpKind.HARDSWISH, OpKind.SIGMOID,
    OpKind.HARDSIGMOID, OpKind.SUB, OpKind.DIV, OpKind.NEG, OpKind.GRN, OpKind.SCALAR_AFFINE, OpKind.SLICE,
    OpKind.CONCAT, OpKind.NORMALIZE, OpKind.ADDITIVE_ATTENTION,
    OpKind.LINEAR, OpKind.CLASS_TOKEN, OpKind.POS_EMBED, OpKind.TOKEN_SELECT, OpKind.ATTENTION,  # on tokens
})
"""Ops whose meaning on an (N, H, W, C) tensor is the same op on its NCHW view (CONV2D: a Linear)."""


def _what(node: fx.Node) -> str:
    return str(node.target) if node.op != "call_function" else getattr(node.target, "__name__", str(node.target))


def _enclosing(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward made `node` ('' at the top)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] for v in stack.values() if v and v[0]]
    if node.op == "call_module":
        return str(node.target)
    return paths[-1] if paths else ""


def check_shapes(network: Network, gm: fx.GraphModule, names: Mapping[fx.Node, str]) -> None:
    """The IR's inferred shapes must equal the shapes torch produced on the example input."""
    try:
        inferred = network.shapes
    except IRError as exc:
        raise TraceError(f"the traced model breaks an IR rule: {exc}") from exc
    for fx_node, name in names.items():
        if name == INPUT or name not in inferred:
            continue
        actual = tokens.token_shape(fx_node)[1:]
        if fx_node.meta.get(CHANNELS_LAST):
            actual = (actual[-1], *actual[:-1])
        if inferred[name] != actual:
            raise TraceError(
                f"node {name!r}: the IR infers shape {inferred[name]} but torch produced {actual}; "
                "the op has semantics the IR does not model: mark its submodule opaque"
            )
