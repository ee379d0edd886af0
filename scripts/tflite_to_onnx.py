"""Convert a BlazeFace .tflite (MediaPipe's face detectors) into an equivalent ONNX graph.

    python scripts/tflite_to_onnx.py IN.tflite OUT.onnx

Build-time only (needs the `tflite` flatbuffer bindings and `onnx`; ferlab itself needs
neither). Handles exactly the operators BlazeFace uses: DEQUANTIZE of float16 constants,
CONV_2D, DEPTHWISE_CONV_2D, ADD, RELU, PAD, MAX_POOL_2D, RESIZE_BILINEAR, RESHAPE, CONCATENATION;
anything
else is an error. The ONNX graph works in NCHW: its input is "image" (1, 3, H, W) float32 (the
TFLite model's NHWC input, transposed), its outputs keep the TFLite names and shapes. Weights
are stored as float32, bit-exact upcasts of the float16 originals.
"""

import sys

import numpy as np


def convert(tflite_path, onnx_path, opset=13):
    import onnx
    import tflite
    from onnx import TensorProto, helper, numpy_helper

    model = tflite.Model.GetRootAsModel(open(tflite_path, "rb").read(), 0)
    graph = model.Subgraphs(0)
    ops_by_code = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16, tflite.TensorType.INT32: np.int32}

    def tensor(i):
        return graph.Tensors(i)

    def name(i):
        return tensor(i).Name().decode()

    def shape(i):
        return [int(d) for d in tensor(i).ShapeAsNumpy()]

    def const(i):
        t = tensor(i)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            return None
        return np.frombuffer(data.tobytes(), dtypes[t.Type()]).reshape(shape(i))

    consts, nodes, inits = {}, [], []

    def init(nm, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), nm))
        return nm

    def activation(out, fused):
        if fused == tflite.ActivationFunctionType.NONE:
            return out
        if fused != tflite.ActivationFunctionType.RELU:
            raise ValueError(f"unsupported fused activation {fused}")
        nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        return out + "_pre"

    def same_pads(in_hw, k, s, padding):
        if padding == tflite.Padding.VALID:
            return [0, 0, 0, 0]
        pads = []
        for size, kk, ss in zip(in_hw, k, s):
            out = -(-size // ss)
            total = max((out - 1) * ss + kk - size, 0)
            pads.append((total // 2, total - total // 2))
        return [pads[0][0], pads[1][0], pads[0][1], pads[1][1]]

    for i in range(graph.TensorsLength()):
        c = const(i)
        if c is not None:
            consts[i] = c
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = ops_by_code[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ins, outs = list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())
        out = name(outs[0])
        opts = op.BuiltinOptions()
        if kind == "DEQUANTIZE":
            consts[outs[0]] = consts[ins[0]].astype(np.float32)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = (tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)()
            o.Init(opts.Bytes, opts.Pos)
            w = consts[ins[1]].astype(np.float32)
            in_c = shape(ins[0])[3]
            if kind == "CONV_2D":
                w, group = w.transpose(0, 3, 1, 2), 1  # OHWI -> OIHW
            else:
                w, group = w.transpose(3, 0, 1, 2), in_c  # 1HW(C*M) -> (C*M)1HW
            k_hw, s_hw = list(w.shape[2:]), [o.StrideH(), o.StrideW()]
            pads = same_pads(shape(ins[0])[1:3], k_hw, s_hw, o.Padding())
            inputs = [name(ins[0]), init(f"{out}_w", w)]
            if len(ins) > 2 and ins[2] >= 0:
                inputs.append(init(f"{out}_b", consts[ins[2]].astype(np.float32)))
            nodes.append(helper.make_node("Conv", inputs, [activation(out, o.FusedActivationFunction())], kernel_shape=k_hw,
                                          strides=s_hw, pads=pads, group=group,
                                          dilations=[o.DilationHFactor(), o.DilationWFactor()]))
        elif kind == "ADD":
            o = tflite.AddOptions()
            o.Init(opts.Bytes, opts.Pos)
            nodes.append(helper.make_node("Add", [name(ins[0]), name(ins[1])], [activation(out, o.FusedActivationFunction())]))
        elif kind == "RELU":
            nodes.append(helper.make_node("Relu", [name(ins[0])], [out]))
        elif kind == "PAD":
            p = consts[ins[1]]  # NHWC rows of (before, after)
            order = [0, 3, 1, 2]
            pads = [int(p[d, 0]) for d in order] + [int(p[d, 1]) for d in order]
            nodes.append(helper.make_node("Pad", [name(ins[0]), init(f"{out}_pads", np.array(pads, np.int64))], [out]))
        elif kind == "MAX_POOL_2D":
            o = tflite.Pool2DOptions()
            o.Init(opts.Bytes, opts.Pos)
            k_hw, s_hw = [o.FilterHeight(), o.FilterWidth()], [o.StrideH(), o.StrideW()]
            pads = same_pads(shape(ins[0])[1:3], k_hw, s_hw, o.Padding())
            nodes.append(helper.make_node("MaxPool", [name(ins[0])], [activation(out, o.FusedActivationFunction())],
                                          kernel_shape=k_hw, strides=s_hw, pads=pads))
        elif kind == "RESIZE_BILINEAR":
            o = tflite.ResizeBilinearOptions()
            o.Init(opts.Bytes, opts.Pos)
            mode = "align_corners" if o.AlignCorners() else "half_pixel" if o.HalfPixelCenters() else "asymmetric"
            n, h, w, c = shape(outs[0])
            sizes = init(f"{out}_sizes", np.array([n, c, h, w], np.int64))
            nodes.append(helper.make_node("Resize", [name(ins[0]), "", "", sizes], [out], mode="linear",
                                          coordinate_transformation_mode=mode))
        elif kind == "RESHAPE":
            nodes.append(helper.make_node("Transpose", [name(ins[0])], [out + "_nhwc"], perm=[0, 2, 3, 1]))
            nodes.append(helper.make_node("Reshape", [out + "_nhwc", init(f"{out}_shape", np.array(shape(outs[0]), np.int64))],
                                          [out]))
        elif kind == "CONCATENATION":
            o = tflite.ConcatenationOptions()
            o.Init(opts.Bytes, opts.Pos)
            rank, axis = len(shape(outs[0])), o.Axis()
            axis = axis % rank
            if rank == 4:  # activations are NCHW here
                axis = {0: 0, 1: 2, 2: 3, 3: 1}[axis]
            nodes.append(helper.make_node("Concat", [name(i) for i in ins], [activation(out, o.FusedActivationFunction())],
                                          axis=axis))
        else:
            raise ValueError(f"unsupported TFLite operator {kind}")

    (inp,) = list(graph.InputsAsNumpy())
    n, h, w, c = shape(inp)
    nodes.insert(0, helper.make_node("Identity", ["image"], [name(inp)]))
    outputs = [helper.make_tensor_value_info(name(i), TensorProto.FLOAT, shape(i)) for i in graph.OutputsAsNumpy()]
    onnx_graph = helper.make_graph(nodes, "blazeface", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [n, c, h, w])],
                                   outputs, inits)
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", opset)],
                                   producer_name="ferlab scripts/tflite_to_onnx.py")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, onnx_path)
    return onnx_path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.split("\n\n")[1])
    convert(sys.argv[1], sys.argv[2])
