"""Blockwise symmetric weight quantization in ONNX Runtime's ``MatMulNBits`` layout, written here so the
data-aware int4 methods (``int4_awq``, ``int4_gptq``) choose the integers and ORT's kernels run them.

A weight W is [K, N] (``MatMul(A[.., K], W)``); each column is cut into blocks of ``block`` rows
(K padded to a whole block; the padding codes are 0, as ORT writes them). Per block one fp32
scale, no zero point input: the node's implied zero point is 2^(bits−1), so a code c ∈ [0, 2^bits)
means (c − 2^(bits−1))·scale. As ORT's own symmetric quantizer does, the entry of largest magnitude
m (times a clip ratio r ≤ 1) maps to −2^(bits−1): scale = r·m / −2^(bits−1), codes round to nearest
and clip. With r = 1 this is exactly ORT's round-to-nearest (tests compare the packed bytes).
Packing: B is uint8 [N, K/block, block·bits/8], the element of even index in the low nibble for 4
bits; scales [N, K/block].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from modelpress.quantize.chunks import column_chunks


@dataclass(frozen=True)
class BlockQuant:
    """A [K, N] weight quantized in blocks: signed codes [K_padded, N] (−2^(bits−1) … 2^(bits−1)−1)
    and scales [K_padded/block, N]."""

    codes: np.ndarray
    scales: np.ndarray
    bits: int
    block: int
    k: int  # the unpadded K

    def dequantized(self, columns: slice = slice(None)) -> np.ndarray:
        """The [K, N] fp32 weight the kernel computes with (``columns``: only those output columns)."""
        expanded = np.repeat(self.scales[:, columns], self.block, axis=0)
        return (self.codes[:, columns].astype(np.float32) * expanded)[: self.k]

    @property
    def nbytes(self) -> int:
        """Bytes in the graph: packed codes and fp32 scales."""
        return self.codes.size * self.bits // 8 + self.scales.size * 4


def padded(w: np.ndarray, block: int) -> np.ndarray:
    """``w`` [K, N] with zero rows appended up to a whole number of blocks."""
    k = w.shape[0]
    extra = -k % block
    return np.pad(w, ((0, extra), (0, 0))) if extra else w


def block_scales(w: np.ndarray, bits: int, block: int, ratio: np.ndarray | float = 1.0) -> np.ndarray:
    """Scales [K_padded/block, N] of ``w`` [K, N]: the signed peak of each block times ``ratio``
    (a scalar or one per block and column) over −2^(bits−1); an all-zero block gets scale 0, as in ORT."""
    blocks = padded(w, block).reshape(-1, block, w.shape[1])
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
    return (peak * ratio / -(1 << (bits - 1))).astype(np.float32)


def codes_for(w: np.ndarray, scales: np.ndarray, bits: int, block: int) -> np.ndarray:
    """Signed codes of ``w`` [K, N] (or [K_padded, N]) at ``scales``: rounded to nearest, clipped."""
    half = 1 << (bits - 1)
    expanded = np.repeat(scales, block, axis=0)[: w.shape[0]]
    safe = np.where(expanded == 0, np.float32(1.0), expanded)  # an all-zero block: codes 0
    codes = np.clip(np.round(w / safe), -half, half - 1).astype(np.int8)
    return padded(codes, block) if codes.shape[0] % block else codes


def quantize_rtn(w: np.ndarray, bits: int, block: int, ratio: np.ndarray | float = 1.0) -> BlockQuant:
    """Round to nearest at the block's (clipped) peak scale."""
    scales = block_scales(w, bits, block, ratio)
    return BlockQuant(codes_for(padded(w, block), scales, bits, block), scales, bits, block, w.shape[0])


#: input rows per scale of an 8-bit output layer in an int4 graph (``quantize.head_bits = 8``): its fp32 scales
#: are 3 % of its bytes instead of 12.5 % at 32 rows (a Qwen2.5-0.5B head: 140 MB instead of 153), and 8 bits at
#: 128 rows stay far finer than the int4 body. Not for speed: ONNX Runtime's 8-bit kernel ran that head (896 ×
#: 151,936, one token, 2 threads, Zen 4 with AVX512-VNNI, interleaved) in 3.68 ms at block 128 and 3.43 ms at 32
EIGHT_BIT_HEAD_BLOCK = 128


def head_block(k: int, block: int) -> int:
    """The block of an 8-bit output layer of input width ``k`` in a graph of int4 ``block``:
    :data:`EIGHT_BIT_HEAD_BLOCK` where it is coarser and divides ``k`` (the tied lookup needs whole
    blocks), else ``block``."""
    return EIGHT_BIT_HEAD_BLOCK if block < EIGHT_BIT_HEAD_BLOCK and k % EIGHT_BIT_HEAD_BLOCK == 0 else block


def quantize_rtn_by_columns(w: np.ndarray, bits: int, block: int, rows: np.ndarray | None = None) -> BlockQuant:
    """:func:`quantize_rtn` of ``w`` [K, N] (times ``rows`` [K, 1], AWQ's scales, where given) computed a
    chunk of output columns at a time (columns are independent), so a wide weight's temporaries stay a
    chunk's: an LM head of 151,936 columns is 544 MB in fp32."""
    parts = [quantize_rtn(w[:, c] if rows is None else w[:, c] * rows, bits, block) for c in column_chunks(w.shape[1])]
    return BlockQuant(
        np.concatenate([p.codes for p in parts], axis=1),
        np.concatenate([p.scales for p in parts], axis=1),
        bits,
        block,
        w.shape[0],
    )


def pack(q: BlockQuant) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' ``B`` (uint8 [N, K_padded/block, block·bits/8]) and ``scales`` ([N, K_padded/block])."""
    half = 1 << (q.bits - 1)
    unsigned = (q.codes.astype(np.int16) + half).astype(np.uint8).T  # [N, K_padded]
    n, kp = unsigned.shape
    unsigned[:, q.k :] = 0  # the padding rows: never read by the kernel
    packed = (unsigned[:, 0::2] | (unsigned[:, 1::2] << 4)).astype(np.uint8) if q.bits == 4 else unsigned
    blob = q.block * q.bits // 8
    return np.ascontiguousarray(packed.reshape(n, kp // q.block, blob)), np.ascontiguousarray(q.scales.T)


def replace_nodes(model: onnx.ModelProto, written: dict[str, onnx.NodeProto]) -> None:
    """``model``'s nodes named in ``written`` replaced by their new node (its order kept), and the
    initializers nothing reads any more dropped: the fp32 weights the ``MatMulNBits`` replaced."""
    rewritten = [written.get(n.name, n) for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    used = {name for n in model.graph.node for name in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def matmulnbits_node(
    model: onnx.ModelProto, node: onnx.NodeProto, q: BlockQuant, *, accuracy_level: int
) -> onnx.NodeProto:
    """The ``MatMulNBits`` that replaces ``node`` (``MatMul(A, W)``) with ``q``'s weight; its two
    initializers are added to ``model``. Named as ORT's quantizer names it (``<name>_Q<bits>``)."""
    b, scales = pack(q)
    weight = node.input[1]
    b_name, s_name = f"{weight}_Q{q.bits}_of_{node.name}", f"{weight}_scales_of_{node.name}"
    model.graph.initializer.extend([numpy_helper.from_array(b, b_name), numpy_helper.from_array(scales, s_name)])
    new = onnx.helper.make_node(
        "MatMulNBits",
        [node.input[0], b_name, s_name],
        list(node.output),
        name=f"{node.name}_Q{q.bits}",
        domain="com.microsoft",
        K=q.k,
        N=q.codes.shape[1],
        bits=q.bits,
        block_size=q.block,
        accuracy_level=accuracy_level,
    )
    new.metadata_props.extend(node.metadata_props)
    return new
