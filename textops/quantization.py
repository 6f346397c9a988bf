"""INT8 schemes for an exported ONNX classifier, and the check that a scheme's answers do not depend on the batch.

dynamic      onnxruntime's quantize_dynamic through Optimum: INT8 weights, activations quantized per call
             with one scale for the whole call, so a text's answer depends on the texts (and padding) beside it.
static       QDQ, S8S8, per-channel weights, activation scales fixed by calibration on train texts: the same
             arithmetic for every text whatever its neighbours.
matmulnbits  8-bit weights in blocks (MatMulNBits), activations quantized per row and block at run time
             (accuracy_level 4): each token row's arithmetic is its own, so batches and padding change nothing.
rowwise      per-channel INT8 weights, each token row's activations quantized with its own scale (one blocked
             QuantizeLinear, opset 21) and multiplied in MatMulInteger: batch-invariant, at dynamic INT8's speed.
"""

from __future__ import annotations

import platform
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MODEL_FILE = "model.onnx"


def copy_side_files(src: Path, dst: Path) -> None:
    """Config and tokenizer files beside a model file, so dst loads as a classifier folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".onnx":
            shutil.copy(f, dst)


def nodes_matching(model, patterns: list[str]) -> list[str]:
    return [n.name for n in model.graph.node if any(re.search(p, n.name) for p in patterns)]


class TextReader:
    """onnxruntime's CalibrationDataReader over tokenized texts, one text per feed: the calibrated ranges are
    those of single texts, as served, without padding rows."""

    def __init__(self, tokenizer, texts: list[str], max_length: int, input_names: set[str]):
        self.feeds = iter(
            {
                k: v.astype(np.int64)
                for k, v in tokenizer([t], truncation=True, max_length=max_length, return_tensors="np").items()
                if k in input_names
            }
            for t in texts
        )

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self):  # the calibrator reads once; a second pass is not needed
        raise NotImplementedError


@contextmanager
def flat_histograms():
    """onnxruntime's histogram calibrators (percentile, entropy) stack each tensor's values from all calibration
    feeds into one array, which fails when the texts differ in length ("inhomogeneous shape"). Their
    histograms only need the values: hand them each tensor flattened into one vector."""
    from onnxruntime.quantization import calibrate

    class FlatHistogramCollector(calibrate.HistogramCollector):
        def collect(self, name_to_arr):
            return super().collect({k: [np.concatenate([np.ravel(a) for a in v])] for k, v in name_to_arr.items()})

    original = calibrate.HistogramCollector
    calibrate.HistogramCollector = FlatHistogramCollector
    try:
        yield
    finally:
        calibrate.HistogramCollector = original


def static(
    fp32_file: Path,
    out_file: Path,
    tokenizer,
    texts: list[str],
    max_length: int,
    method: str = "minmax",
    op_types: list[str] | None = None,
    exclude_nodes: list[str] | None = None,
    percentile: float = 99.999,
    per_channel: bool = True,
    activations: str = "u8",
) -> list[str]:
    """Static QDQ S8S8 of fp32_file into out_file, calibrated on `texts`; returns the node names kept in FP32."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Symbolic shape inference fails on Optimum's export (STACK_NOTES); ONNX's own is enough for MatMul.
        quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        excluded = nodes_matching(model, exclude_nodes or [])
        names = {i.name for i in ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"]).get_inputs()}
        extra = {"CalibPercentile": percentile} if method == "percentile" else {}
        with flat_histograms():
            quantize_static(
                str(prepared),
                str(out_file),
                TextReader(tokenizer, texts, max_length, names),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types or ["MatMul"],
                per_channel=per_channel,
                activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": activations == "s8", **extra},
            )
    return excluded


def matmul_nbits(
    fp32_file: Path,
    out_file: Path,
    block_size: int = 64,
    exclude_nodes: list[str] | None = None,
    bits: int = 8,
    accuracy_level: int = 4,
    embeddings: bool = True,
) -> list[str]:
    """8-bit blockwise weights (MatMulNBits, accuracy_level 4: activations quantized per row and block), and the
    embedding tables (half the file) in INT8 with a scale per row (embeddings_int8)."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    model = onnx.load(str(fp32_file))
    excluded = nodes_matching(model, exclude_nodes or [])
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=accuracy_level,
        bits=bits,
        op_types_to_quantize=("MatMul",),
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=accuracy_level,
        nodes_to_exclude=excluded,
        algo_config=config,
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    if embeddings:
        embeddings_int8(quantizer.model.model)
        drop_unused_initializers(quantizer.model.model.graph)
    quantizer.model.save_model_to_file(str(out_file), False)
    return excluded


def invariance(predict_proba, texts: list[str], batch_size: int) -> dict:
    """Largest probability difference of each text between being scored alone and (a) in length-sorted batches,
    (b) in batches padded beside the longest texts. predict_proba(texts, batch_size) -> (n, classes)."""
    alone = predict_proba(texts, 1)
    sorted_batches = predict_proba(texts, batch_size)
    longest = sorted(texts, key=len)[-(batch_size - 1) :]
    padded = np.concatenate([predict_proba([t, *longest], len(longest) + 1)[:1] for t in texts])
    return {
        "length_sorted": float(np.abs(sorted_batches - alone).max()),
        "padded": float(np.abs(padded - alone).max()),
        "labels_changed": int(
            ((sorted_batches.argmax(1) != alone.argmax(1)) | (padded.argmax(1) != alone.argmax(1))).sum()
        ),
    }


ROW_ZERO_POINTS = "rowwise.zero_points"


def row_quantizer(
    a: str, p: str, symmetric: bool, features: int, zero_points: bool = False
) -> tuple[list, str, str, str | None]:
    """Nodes that quantize activation `a` to uint8 with one scale per row (the last axis): returns the nodes, the
    uint8 tensor, the row scales, and the row zero points (None when symmetric: then 128 for every row).
    Symmetric rows: one blocked QuantizeLinear (opset 21, a block = the row's `features` values) does the divide,
    round, shift by 128 and cast in one pass; as four nodes it cost 10 % more of a request (bench/results/
    int8_schemes.md). Its zero points (128, shaped like the row scales) are shared by every quantized activation,
    all [batch, seq, features]; `zero_points=True` makes them here, from this activation's scales.
    Asymmetric rows span [min(row, 0), max(row, 0)] in 255 steps: a GELU output (>= -0.17) gets twice the
    resolution a symmetric scale gives it."""
    from onnx import TensorProto, helper

    node = helper.make_node
    if symmetric:
        made = [
            node("Abs", [a], [p + "abs"]),
            node("ReduceMax", [p + "abs", "rowwise.axes"], [p + "amax"], keepdims=1),
            node("Max", [p + "amax", "rowwise.eps"], [p + "amax_safe"]),
            node("Mul", [p + "amax_safe", "rowwise.inv127"], [p + "scale"]),
        ]
        if zero_points:
            made += [
                node("Mul", [p + "scale", "rowwise.0"], [p + "zeros"]),
                node("Add", [p + "zeros", "rowwise.128"], [p + "zero_points"]),
                node("Cast", [p + "zero_points"], [ROW_ZERO_POINTS], to=TensorProto.UINT8),
            ]
        made.append(node("QuantizeLinear", [a, p + "scale", ROW_ZERO_POINTS], [p + "q"], axis=-1, block_size=features))
        return made, p + "q", p + "scale", None
    return (
        [
            node("ReduceMax", [a, "rowwise.axes"], [p + "max"], keepdims=1),
            node("ReduceMin", [a, "rowwise.axes"], [p + "min"], keepdims=1),
            node("Max", [p + "max", "rowwise.0"], [p + "hi"]),
            node("Min", [p + "min", "rowwise.0"], [p + "lo"]),
            node("Sub", [p + "hi", p + "lo"], [p + "range"]),
            node("Max", [p + "range", "rowwise.eps"], [p + "range_safe"]),
            node("Mul", [p + "range_safe", "rowwise.inv255"], [p + "scale"]),
            node("Div", [p + "lo", p + "scale"], [p + "lo_steps"]),
            node("Round", [p + "lo_steps"], [p + "neg_zero"]),
            node("Div", [a, p + "scale"], [p + "scaled"]),
            node("Sub", [p + "scaled", p + "neg_zero"], [p + "shifted"]),
            node("Round", [p + "shifted"], [p + "rounded"]),
            node("Clip", [p + "rounded", "rowwise.0", "rowwise.255"], [p + "clipped"]),
            node("Cast", [p + "clipped"], [p + "q"], to=TensorProto.UINT8),
        ],
        p + "q",
        p + "scale",
        p + "neg_zero",
    )


def rowwise(
    fp32_file: Path,
    out_file: Path,
    exclude_nodes: list[str] | None = None,
    embeddings: bool = True,
    symmetric: bool = True,
    smooth: float | None = None,
    calibration: tuple | None = None,
) -> list[str]:
    """INT8 with per-row activation scales, built from standard ONNX ops: every weight MatMul's input is quantized
    row by row (a token's values get their own scale, stored as uint8) and multiplied by per-channel INT8 weights
    in MatMulInteger (exact integer sums, onnxruntime's U8S8 kernels), then rescaled by the row's and the channel's
    scales. Nothing in a row's arithmetic reads another row, so a text's answer is the same alone, in a batch or
    beside padding. Inputs shared by several MatMuls (Q, K, V) are quantized once. The embedding tables are
    stored in INT8 with a scale per row (embeddings_int8). Returns the node names kept in FP32."""
    import onnx
    import onnx.version_converter
    from onnx import TensorProto, helper, numpy_helper

    # opset 21 for blocked QuantizeLinear (a scale per row); the converter rewrites what changed since the export's
    model = onnx.version_converter.convert_version(onnx.load(str(fp32_file)), 21)
    graph = model.graph
    # The converter leaves inferred shapes behind (the export has none); with them onnxruntime fuses Add +
    # LayerNormalization into SkipLayerNormalization, which made single requests 7 % slower (int8_schemes.md).
    graph.ClearField("value_info")
    weights = {i.name: i for i in graph.initializer}
    excluded = nodes_matching(model, exclude_nodes or [])
    targets = [
        n
        for n in graph.node
        if n.op_type == "MatMul"
        and n.input[1] in weights
        and len(weights[n.input[1]].dims) == 2
        and n.name not in excluded
    ]
    consts = {
        "rowwise.axes": np.array([-1], dtype=np.int64),
        "rowwise.inv127": np.array(1 / 127, dtype=np.float32),
        "rowwise.inv255": np.array(1 / 255, dtype=np.float32),
        "rowwise.eps": np.array(1e-12, dtype=np.float32),
        "rowwise.0": np.array(0, dtype=np.float32),
        "rowwise.128": np.array(128, dtype=np.float32),
        "rowwise.255": np.array(255, dtype=np.float32),
        "rowwise.zero_point": np.array(128 if symmetric else 0, dtype=np.uint8),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    smoothing = smoothing_factors(fp32_file, targets, weights, smooth, *calibration) if smooth is not None else {}
    quantized: dict[str, tuple[str, str, str | None]] = {}  # activation -> (uint8 rows, row scales, zero points)
    new_nodes: dict[str, list] = {}  # MatMul name -> the nodes replacing it
    for node in targets:
        a, w = node.input
        nodes = new_nodes.setdefault(node.name, [])
        if a not in quantized:
            p = f"rowwise/{len(quantized)}/"
            source = a
            if a in smoothing:  # the activation divided by its channels' factors, the weights multiplied by them
                graph.initializer.append(numpy_helper.from_array((1 / smoothing[a]).astype(np.float32), p + "smooth"))
                nodes.append(helper.make_node("Mul", [a, p + "smooth"], [p + "smoothed"]))
                source = p + "smoothed"
            first = not quantized
            made, *quantized[a] = row_quantizer(source, p, symmetric, weights[w].dims[0], zero_points=first)
            nodes += made
        q, scale, neg_zero = quantized[a]
        fw = numpy_helper.to_array(weights[w]).astype(np.float32)
        if a in smoothing:
            fw = fw * smoothing[a][:, None]
        w_scale = np.maximum(np.abs(fw).max(axis=0), 1e-12) / 127
        qw = np.clip(np.round(fw / w_scale), -127, 127).astype(np.int8)
        graph.initializer.append(numpy_helper.from_array(qw, w + ".int8"))
        graph.initializer.append(numpy_helper.from_array(w_scale.astype(np.float32), w + ".scale"))
        p = node.name + "/rowwise/"
        nodes += [
            helper.make_node("MatMulInteger", [q, w + ".int8", "rowwise.zero_point"], [p + "int32"]),
            helper.make_node("Cast", [p + "int32"], [p + "sum"], to=TensorProto.FLOAT),
        ]
        if neg_zero is not None:  # (q - z) . w = q . w - z * column sums of w; neg_zero holds -z
            colsum = qw.astype(np.float32).sum(axis=0)
            graph.initializer.append(numpy_helper.from_array(colsum, w + ".colsum"))
            nodes += [
                helper.make_node("Mul", [neg_zero, w + ".colsum"], [p + "correction"]),
                helper.make_node("Add", [p + "sum", p + "correction"], [p + "centered"]),
            ]
        nodes += [
            helper.make_node("Mul", [nodes[-1].output[0], w + ".scale"], [p + "by_channel"]),
            helper.make_node("Mul", [p + "by_channel", scale], [node.output[0]]),
        ]
    order = []
    for node in graph.node:
        order.extend(new_nodes.get(node.name, [node]))
    graph.ClearField("node")
    graph.node.extend(order)
    if embeddings:
        embeddings_int8(model)
    drop_unused_initializers(graph)
    onnx.save(model, str(out_file))
    return excluded


def smoothing_factors(fp32_file: Path, targets: list, weights: dict, alpha: float, tokenizer, texts, max_length):
    """SmoothQuant's per-input-channel factors for each quantized activation: s = max|A_k|^alpha / max|W_k|^(1-alpha),
    from the activations of calibration texts (train split) and every weight that reads them. Dividing the
    activation's channels by s and multiplying the weights' rows by s leaves the product unchanged and moves
    the activations' outlier channels into the weights, where per-channel scales absorb them. The factors are
    constants, so the model stays batch-invariant."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    consumers: dict[str, list[np.ndarray]] = {}
    for node in targets:
        consumers.setdefault(node.input[0], []).append(numpy_helper.to_array(weights[node.input[1]]))
    model = onnx.load(str(fp32_file))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in consumers)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    amax = {name: np.zeros(ws[0].shape[0], dtype=np.float32) for name, ws in consumers.items()}
    for text in texts:
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        outs = session.run(list(consumers), {k: v.astype(np.int64) for k, v in enc.items() if k in names})
        for name, value in zip(consumers, outs, strict=True):
            amax[name] = np.maximum(amax[name], np.abs(value).reshape(-1, value.shape[-1]).max(axis=0))
    factors = {}
    for name, ws in consumers.items():
        wmax = np.max([np.abs(w).max(axis=1) for w in ws], axis=0)
        factors[name] = np.clip(
            np.maximum(amax[name], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha), 1e-2, 1e2
        )
    return factors


def drop_unused_initializers(graph) -> None:
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    graph.ClearField("initializer")
    graph.initializer.extend(kept)


def embeddings_int8(model) -> None:
    """Every embedding table (a Gather from a 2-D initializer) in INT8 with one scale per row, in place: a looked-up
    row is dequantized with its own scale. (One scale for the whole word table, onnxruntime's Gather quantization,
    cost 0.4 points of label agreement on SST-2: rare words' rows are small beside the table's largest.)"""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    order = []
    for node in graph.node:
        table = weights.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or len(table.dims) != 2:
            order.append(node)
            continue
        values = numpy_helper.to_array(table).astype(np.float32)
        scale = np.maximum(np.abs(values).max(axis=1, keepdims=True), 1e-12) / 127
        name, p = table.name, node.name + "/int8/"
        graph.initializer.append(numpy_helper.from_array(np.round(values / scale).astype(np.int8), name + ".int8"))
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), name + ".row_scale"))
        axis = [helper.make_attribute("axis", a.i) for a in node.attribute if a.name == "axis"]
        rows = helper.make_node("Gather", [name + ".int8", node.input[1]], [p + "rows"])
        scales = helper.make_node("Gather", [name + ".row_scale", node.input[1]], [p + "scales"])
        rows.attribute.extend(axis)
        scales.attribute.extend(axis)
        order += [
            rows,
            scales,
            helper.make_node("Cast", [p + "rows"], [p + "float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "float", p + "scales"], [node.output[0]]),
        ]
    graph.ClearField("node")
    graph.node.extend(order)


def build(scheme: str, fp32: Path, out: Path, q, tokenizer, calibration: list[str], max_length: int) -> list[str]:
    """One scheme's INT8 model of fp32/model.onnx as out/model_quantized.onnx beside the tokenizer and config, with
    `q` = sentiment.quantize; returns the node names kept in FP32."""
    from textops.onnx_export import INT8_FILE, choose_config, cpu_flags, quantize

    copy_side_files(fp32, out)
    source, target = fp32 / MODEL_FILE, out / INT8_FILE
    if scheme == "dynamic":
        config_name = choose_config(q.config, cpu_flags(), platform.machine())
        return quantize(fp32, out, config_name, q.per_channel, q.exclude_nodes, q.optimize)
    if scheme == "static":
        s = q.static
        return static(
            source,
            target,
            tokenizer,
            calibration,
            max_length,
            s.method,
            s.op_types,
            s.exclude_nodes,
            s.percentile,
            True,
            s.activations,
        )
    if scheme == "matmulnbits":
        m = q.matmulnbits
        return matmul_nbits(source, target, m.block_size, m.exclude_nodes, embeddings=m.embeddings)
    return rowwise(
        source,
        target,
        q.rowwise.exclude_nodes,
        q.rowwise.embeddings,
        smooth=q.rowwise.smooth,
        calibration=(tokenizer, calibration, max_length),
    )
