"""The predictor's ONNX graph compiled for numpy: the cascade's in-process scoring engine.

Why not onnxruntime there: inside the server every score follows a ~10 ms stage call, and after that
long any code starts with cold CPU caches (this is a shared 2-core VM: even a process that spins
meanwhile finds them cold). Cold, what a call costs is the code it touches: onnxruntime's per-call path
(session, binding, executor, 15 kernels) ~270 us for the 64-32-16-1 MLP against ~30 us warm; each
distinct numpy operation 10-50 us. So the graph is compiled to as few numpy operations as the arithmetic
allows: each layer's bias folded into its weight matrix (the input gets a constant 1, and each hidden
layer carries that 1 forward in one extra unit), so a three-layer MLP is three matmuls and two maxima,
and the final sigmoid runs on Python floats.

The ONNX file stays the artifact: this reads its graph and initializers. It accepts exactly the graphs
optistop.predictor.onnx_export writes (``ModeSwitch``: ``Where(x[:, j] > t, net_a(x), net_b(x))``) and
single networks; a network is a chain of ``Gemm`` (weights and bias initializers) with ``Relu`` between
and a final ``Sigmoid``. Anything else is refused with ``UnsupportedGraph`` naming what it found, and
``QualityPredictor`` compares the two engines on random inputs whenever it loads and keeps onnxruntime
if they disagree.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optistop.logistic import sigmoid1


class UnsupportedGraph(ValueError):
    """The graph is not one this compiler handles; the message names what it found."""


@dataclass(frozen=True)
class _Net:
    """A Gemm/Relu chain as augmented matrices: rows of ``[x, 1]`` times each, ReLU between, sigmoid last."""

    layers: tuple[np.ndarray, ...]

    def logits(self, x1: np.ndarray) -> list[float]:
        h = x1
        for w in self.layers[:-1]:
            h = h @ w
            np.maximum(h, 0.0, out=h)   # the carried constant unit stays 1
        return (h @ self.layers[-1]).ravel().tolist()


class MlpGraph:
    """Raw predictor outputs for rows of features, from a compiled ModeSwitch or single-network graph."""

    def __init__(self, model: Any) -> None:
        from onnx import numpy_helper

        g = model.graph
        self._const = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self._producer = {out: node for node in g.node for out in node.output}
        for node in g.node:
            if node.op_type == "Constant":
                self._const[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))
        inputs = [i.name for i in g.input if i.name not in self._const]
        if len(inputs) != 1 or len(g.output) != 1:
            raise UnsupportedGraph(f"needs one input and one output, the graph has {inputs} and "
                                   f"{[o.name for o in g.output]}")
        self.input = inputs[0]
        out = self._node(g.output[0].name)
        # column j of the input decides the network (ModeSwitch's ex_ante slot), or there is one network
        self.switch: tuple[int, float] | None = None
        if out.op_type == "Where":
            self.switch = self._condition(out.input[0])
            self.nets = (self._chain(out.input[1]), self._chain(out.input[2]))   # (if x[j] > t, else)
        else:
            self.nets = (self._chain(out.output[0]),) * 2

    @classmethod
    def load(cls, source: str | Path | bytes) -> MlpGraph:
        import onnx

        return cls(onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(str(source)))

    def __call__(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """Raw outputs (probabilities) for rows of input values, in row order."""
        if not rows:
            return []
        net = [0] * len(rows)
        if self.switch is not None:
            j, t = self.switch   # the graph compares the float32 input: round the column as it would
            net = [0 if v > t else 1 for v in array("f", [row[j] for row in rows])]
        if min(net) == max(net):        # the cascade's calls: one mode per call
            x1 = np.array([[*row, 1.0] for row in rows], dtype=np.float32)
            return [sigmoid1(z) for z in self.nets[net[0]].logits(x1)]
        out = [0.0] * len(rows)
        for k in (0, 1):
            idx = [i for i, m in enumerate(net) if m == k]
            for i, p in zip(idx, self([rows[i] for i in idx]) if idx else []):
                out[i] = p
        return out

    def _node(self, name: str) -> Any:
        node = self._producer.get(name)
        if node is None:
            raise UnsupportedGraph(f"value {name!r} is not computed by a node")
        return node

    def _condition(self, name: str) -> tuple[int, float]:
        """``Greater(Slice(input, [j, j+1) on axis 1), t)`` -> (j, t)."""
        node = self._node(name)
        if node.op_type != "Greater" or node.input[1] not in self._const or self._const[node.input[1]].size != 1:
            raise UnsupportedGraph(f"Where's condition is {node.op_type} of {list(node.input)}, expected "
                                   f"Greater(one input column, constant)")
        sl = self._node(node.input[0])
        args = [self._const.get(n) for n in sl.input[1:]]
        if (sl.op_type != "Slice" or sl.input[0] != self.input or len(args) < 3 or any(a is None for a in args)
                or [int(a.size) for a in args[:3]] != [1, 1, 1] or int(args[2][0]) != 1
                or (len(args) > 3 and int(args[3][0]) != 1) or int(args[1][0]) != int(args[0][0]) + 1):
            raise UnsupportedGraph("Where's condition does not slice one column of the input")
        return int(args[0][0]), float(self._const[node.input[1]].reshape(-1)[0])

    def _chain(self, name: str) -> _Net:
        """Sigmoid(Gemm(... Relu(Gemm(input)) ...)) -> its augmented layers, input side first."""
        node = self._node(name)
        if node.op_type != "Sigmoid":
            raise UnsupportedGraph(f"a network must end in Sigmoid, found {node.op_type}")
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        name = node.input[0]
        while name != self.input:
            gemm = self._node(name)
            if gemm.op_type != "Gemm" or len(gemm.input) != 3 or any(n not in self._const for n in gemm.input[1:]):
                raise UnsupportedGraph(f"expected Gemm with weight and bias initializers, found {gemm.op_type}")
            if int(_attr(gemm, "transA", 0)):
                raise UnsupportedGraph("Gemm with transA=1")
            w = self._const[gemm.input[1]].astype(np.float64)
            w = (w.T if int(_attr(gemm, "transB", 0)) else w) * float(_attr(gemm, "alpha", 1.0))
            c = self._const[gemm.input[2]].astype(np.float64) * float(_attr(gemm, "beta", 1.0))
            if c.size not in (1, w.shape[1]):
                raise UnsupportedGraph(f"Gemm bias of shape {list(c.shape)} for {w.shape[1]} outputs")
            b = np.broadcast_to(c.reshape(-1), (w.shape[1],))
            layers.insert(0, (w, b))
            name = gemm.input[0]
            if name != self.input:
                relu = self._node(name)
                if relu.op_type != "Relu":
                    raise UnsupportedGraph(f"expected Relu between Gemm layers, found {relu.op_type}")
                name = relu.input[0]
        if not layers:
            raise UnsupportedGraph("a network without Gemm layers")
        out = []
        for i, (w, b) in enumerate(layers):
            last = i == len(layers) - 1
            a = np.zeros((w.shape[0] + 1, w.shape[1] + (0 if last else 1)))
            a[:-1, :w.shape[1]], a[-1, :w.shape[1]] = w, b
            if not last:
                a[-1, -1] = 1.0      # the extra unit: 1 in, ReLU(1) = 1 out, the next layer's bias row
            out.append(a.astype(np.float32))
        return _Net(tuple(out))


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
