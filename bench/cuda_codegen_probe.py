"""What Inductor generates for CUDA from the app's compiled decode step, read on a machine without a GPU.

Why: whether a torchao int8 or fp8 weight is read as 1 byte by one fused Triton kernel, copied to bf16 first, or sent
to an ATen kernel is decided by Inductor's code generation, before the GPU runs anything. On the CPU Inductor takes
other roads (C++ kernels; no one-row matmul decomposition; the CPU's weight-only pattern), so a CPU compile says
nothing about the GPU's code. This compiles for a pretend CUDA device instead (an H200: compute capability 9.0, 132
SMs): torch.cuda's queries are answered here, the tensors are fake (shapes, strides and dtypes only), and the generated
module is kept before anything would be built or run on the device. So it shows which kernels Inductor writes, not how
fast they run; the block sizes coordinate-descent tuning would pick are chosen on the GPU and are not here.

What is compiled: the decode step the app compiles (quant.loader.load_model on the CPU with QUANT_FAST_GENERATION=all,
through a dynamo backend that keeps the graph; its CPU constants moved to the pretend device), or, with --layer, one
linear layer quantized with the method's GPU torchao config (for a mode that does not load on the CPU: fp8). Inductor
gets the method's compile_options (QuantMethod.compile_options) unless --inductor-options gives others. Shape padding
and joint-graph constant folding are off (both run real kernels at compile time); nothing else differs. Built on the
internals of torch 2.14 (fake CUDA devices, Inductor's wrapper code): a probe, not a test.

Reports each Triton kernel (reduction or pointwise, sizes, the dtypes it reads and writes, launches per step), the
extern calls (cuBLAS `mm`, `_weight_int8pack_mm`, ...) and every bf16 buffer as large as a quantized weight (a
dequantized copy written at each step); the generated module is kept as <stem>.output_code.py.

    python bench/cuda_codegen_probe.py --mode torchao_int8 --out /tmp/probe                 # the demo model's step
    python bench/cuda_codegen_probe.py --mode torchao_int8 --shape 8b --layers 2 --out /tmp/probe
    python bench/cuda_codegen_probe.py --mode torchao_int8 --shape 8b --layers 2 --inductor-options '{}' \\
        --tag=-inductor-defaults --out /tmp/probe                                           # without the settings
    python bench/cuda_codegen_probe.py --mode fp8 --layer 4096x14336 --out /tmp/probe       # one fp8 layer
    python bench/cuda_codegen_probe.py --mode torchao_int8 --layer 4096x14336 --batch-size 4 --out /tmp/probe
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import sys
import time
import types
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, WORK, bench_parser, result_stem, write_results  # noqa: E402

CAPTURE_BACKEND = "quant_cuda_codegen_capture"
CUDA = torch.device("cuda", 0)


# --- the graph ---------------------------------------------------------------------------------------------------

def capture_backend(store: list):
    """A dynamo backend that keeps (graph, example inputs) and runs the graph as it is."""
    def backend(gm, example_inputs):
        store.append((gm, list(example_inputs)))
        return gm.forward
    return backend


def capture_step(model: str, mode, options, batch_size: int, cache_tokens: int, kernels: Path):
    """The app's compiled decode step for `mode`, as dynamo hands it to the backend: (graph, example inputs)."""
    from quant.loader import LoadRequest, load_model

    store: list = []
    torch._dynamo.reset()
    torch._dynamo.register_backend(capture_backend(store), name=CAPTURE_BACKEND)
    os.environ.update(QUANT_FAST_GENERATION="all", QUANT_COMPILE_BACKEND=CAPTURE_BACKEND,
                      QUANT_COMPILED_BATCH_SIZES=str(batch_size), QUANT_STATIC_CACHE_TOKENS=str(cache_tokens),
                      QUANT_KERNEL_CACHE=str(kernels))
    loaded = load_model(LoadRequest(model=model, mode=mode, options=options, device_map="cpu"))
    if not loaded.path.compiled or not store:
        raise SystemExit(f"{mode} did not take the compiled path: {loaded.path.describe()}")
    return store[0]


def capture_layer(method, options, in_features: int, out_features: int, batch_size: int):
    """One bf16 nn.Linear quantized with the method's GPU torchao config (quantized here, on the CPU), compiled on an
    input of `batch_size` rows of one token."""
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    layer = torch.nn.Linear(in_features, out_features, bias=False, dtype=torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=0.02)
    quantize_(layer, method.torchao_config(options, on_cuda=True))
    store: list = []
    compiled = torch.compile(layer, backend=capture_backend(store), dynamic=False)
    with torch.inference_mode():
        compiled(torch.randn(batch_size, 1, in_features, dtype=torch.bfloat16))
    return store[0]


def to_pretend_device(gm: torch.fx.GraphModule) -> None:
    """Move the graph's CPU constants (device arguments, tensor constants) to CUDA, and spell as aten ops the Python
    operators whose C++ bindings take a device guard (indexing, `~`, ...): a guard asks the driver for the device."""
    def fix(value):
        if isinstance(value, torch.device) and value.type == "cpu":
            return CUDA
        if isinstance(value, (list, tuple)):
            return type(value)(fix(v) for v in value)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    operators = {operator.invert: torch.bitwise_not, operator.and_: torch.bitwise_and,
                 operator.or_: torch.bitwise_or, operator.xor: torch.bitwise_xor, operator.add: torch.add,
                 operator.sub: torch.sub, operator.mul: torch.mul, operator.truediv: torch.div,
                 operator.neg: torch.neg, operator.lt: torch.lt, operator.le: torch.le, operator.gt: torch.gt,
                 operator.ge: torch.ge, operator.eq: torch.eq, operator.ne: torch.ne,
                 operator.floordiv: torch.floor_divide, operator.mod: torch.remainder, operator.pow: torch.pow,
                 operator.matmul: torch.matmul}
    graph = gm.graph
    for node in list(graph.nodes):
        node.args, node.kwargs = fix(node.args), fix(node.kwargs)
        if node.op != "call_function":
            continue
        if node.target in operators:
            node.target = operators[node.target]
        elif node.target is operator.getitem and not isinstance(node.args[1], int):  # int: a tuple's item
            with graph.inserting_before(node):
                replacement = _index(graph, *node.args)
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
    gm.recompile()


def _index(graph, base, index):
    """`base[index]` as aten ops: None, slices, integers, a trailing `...` form, or tensors (advanced indexing)."""
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, torch.fx.Node) for i in items):
        if not all(isinstance(i, torch.fx.Node) or i == slice(None) for i in items):
            raise NotImplementedError(f"index {items}")
        return graph.call_function(torch.ops.aten.index.Tensor,
                                   (base, [i if isinstance(i, torch.fx.Node) else None for i in items]))
    if items and items[0] is Ellipsis:
        if len(items) != 2 or not (items[1] is None or isinstance(items[1], slice)):
            raise NotImplementedError(f"index {items}")
        last = items[1]
        if last is None:
            return graph.call_function(torch.ops.aten.unsqueeze.default, (base, -1))
        return graph.call_function(torch.ops.aten.slice.Tensor, (base, -1, last.start, last.stop, last.step or 1))
    current, dim = base, 0
    for item in items:
        if item is None:
            current = graph.call_function(torch.ops.aten.unsqueeze.default, (current, dim))
            dim += 1
        elif isinstance(item, slice):
            if item != slice(None):
                current = graph.call_function(torch.ops.aten.slice.Tensor,
                                              (current, dim, item.start, item.stop, item.step or 1))
            dim += 1
        elif isinstance(item, int):
            current = graph.call_function(torch.ops.aten.select.int, (current, dim, item))
        else:
            raise NotImplementedError(f"index {item!r}")
    return current


# --- the pretend device -------------------------------------------------------------------------------------------

@contextlib.contextmanager
def pretend_h200():
    """torch.cuda answers as for one H200; Inductor's pattern set-ups that build real CUDA tensors are skipped (the
    attention and misc patterns: not what is read here); the generated module is taken before it is loaded."""
    import torch._inductor.fx_passes.fuse_attention as fuse_attention
    import torch._inductor.fx_passes.misc_patterns as misc_patterns
    import torch.utils._triton as torch_triton
    from torch._inductor.graph import GraphLowering
    from torch._inductor.runtime.hints import DeviceProperties
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend

    props = types.SimpleNamespace(name="NVIDIA H200 (pretend)", major=9, minor=0, multi_processor_count=132,
                                  total_memory=141 * 2**30, warp_size=32, max_threads_per_multi_processor=2048,
                                  regs_per_multiprocessor=65536, shared_memory_per_block_optin=232448,
                                  L2_cache_size=50 * 2**20, gcnArchName="", max_threads_per_block=1024)
    captured: list = []

    def compile_to_module(self):
        code = self.codegen()
        code = code[0] if isinstance(code, tuple) else code
        captured.append(getattr(code, "value", code))
        raise _Captured()

    patches = [
        (torch.cuda, "is_available", lambda: True), (torch.cuda, "device_count", lambda: 1),
        (torch.cuda, "current_device", lambda: 0), (torch.cuda, "get_device_capability", lambda d=None: (9, 0)),
        (torch.cuda, "get_device_properties", lambda d=None: props),
        (torch.cuda, "get_device_name", lambda d=None: props.name),
        (torch.cuda, "is_bf16_supported", lambda *a, **k: True), (torch.cuda, "set_device", lambda d: None),
        (torch.cuda, "synchronize", lambda d=None: None),
        (torch.cuda, "get_rng_state", lambda d=None: torch.zeros(16, dtype=torch.uint8)),
        (torch.cuda, "set_rng_state", lambda s, d=None: None), (torch.cuda, "_lazy_init", lambda: None),
        (torch.cuda, "is_initialized", lambda: True), (torch.cuda, "_exchange_device", lambda d: 0),
        (torch.cuda, "_maybe_exchange_device", lambda d: 0),
        (torch.Tensor, "copy_", lambda self, src, non_blocking=False:
         torch.ops.aten.copy_.default(self, src, non_blocking)),
        (torch_triton, "triton_backend", lambda: CUDABackend(GPUTarget("cuda", 90, 32))),
        (torch_triton, "triton_hash_with_backend", lambda: "pretend-h200"),
        (DeviceProperties, "create", staticmethod(lambda device: DeviceProperties(
            type="cuda", index=0, multi_processor_count=132, cc=90, major=9, regs_per_multiprocessor=65536,
            max_threads_per_multi_processor=2048, warp_size=32))),
        (fuse_attention, "_sfdp_init", lambda *a, **k: None),
        (misc_patterns, "_misc_patterns_init", lambda *a, **k: None),
        (GraphLowering, "compile_to_module", compile_to_module),
    ]
    saved = [(owner, name, name in vars(owner), vars(owner).get(name)) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        torch_triton.has_triton.cache_clear()  # asked (False) while the model loaded on the CPU
        yield captured
    finally:
        for owner, name, own, value in saved:
            if own:
                setattr(owner, name, value)
            else:  # inherited (Tensor.copy_ from the C base class)
                delattr(owner, name)
        torch_triton.has_triton.cache_clear()


class _Captured(Exception):
    """Raised once the generated module is kept: nothing is built for the pretend device."""


def cuda_code(gm, example_inputs, inductor_options: dict) -> str:
    """Inductor's generated module for the graph on the pretend H200, with `inductor_options` patched in."""
    from torch._inductor.compile_fx import compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    with pretend_h200() as captured:
        to_pretend_device(gm)
        fake_mode = FakeTensorMode()

        def fake(t):
            if not isinstance(t, torch.Tensor):
                return t
            if is_traceable_wrapper_subclass(t):
                return t._apply_fn_to_data(fake)
            with fake_mode:
                f = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=CUDA)
            return torch.nn.Parameter(f, requires_grad=False) if isinstance(t, torch.nn.Parameter) else f

        fakes = [fake(t) for t in example_inputs]
        for name in [n for n in dir(gm) if n.startswith("_tensor_constant")]:
            setattr(gm, name, fake_mode.from_tensor(getattr(gm, name)).to(CUDA))
        patches = {"shape_padding": False, "joint_graph_constant_folding": False, **inductor_options}
        try:
            with fake_mode:
                compile_fx(gm, fakes, config_patches=patches)
        except Exception:  # noqa: BLE001 - Inductor wraps the _Captured that ends the compile
            if not captured:
                raise
    return captured[-1]


# --- what the code says -------------------------------------------------------------------------------------------

def summarize(code: str, quantized_weight_numel: int | None) -> dict:
    """The Triton kernels, the extern calls and the bf16 buffers at least as large as a quantized weight."""
    kernels = []
    for match in re.finditer(r"^(triton_\w+) = async_compile\.triton\('\w+', '''(.*?)''', device_str", code,
                             re.M | re.S):
        name, source = match.groups()
        signature = re.search(r"'signature': (\{[^}]*\})", source)
        pointers = re.findall(r"'(in_ptr\d+|out_ptr\d+|in_out_ptr\d+)': '\*(\w+)'", signature.group(1) if signature
                              else "")
        sizes = re.search(r"size_hints=(\{[^}]*\})", source)
        kind = ("reduction" if name.startswith(("triton_red_", "triton_per_")) else
                "pointwise" if name.startswith("triton_poi_") else "other")
        kernels.append({"name": name, "kind": kind, "size_hints": sizes.group(1) if sizes else "",
                        "reads": sorted({t for p, t in pointers if p.startswith("in_")}),
                        "launches": len(re.findall(rf"^\s+{name}\.run\(", code, re.M))})
    externs = Counter(re.findall(r"extern_kernels\.(\w+)\(", code))
    copies = []
    for shape in re.findall(r"empty_strided_cuda\(\(([\d, ]+)\), \([\d, ]+\), torch\.bfloat16\)", code):
        numel = 1
        for size in filter(None, (s.strip() for s in shape.split(","))):
            numel *= int(size)
        if quantized_weight_numel and numel >= quantized_weight_numel:
            copies.append(f"({shape})")
    return {"triton_kernels": kernels, "triton_launches": sum(k["launches"] for k in kernels),
            "extern_calls": dict(externs), "bf16_weight_sized_buffers": copies}


def quantized_numel(example_inputs) -> int | None:
    """The fewest elements of a quantized weight among the graph's inputs (torchao's tensor subclasses)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    sizes = [t.numel() for t in example_inputs if isinstance(t, torch.Tensor) and is_traceable_wrapper_subclass(t)]
    return min(sizes) if sizes else None


def markdown(data: dict) -> str:
    lines = [f"# Inductor's CUDA code for {data['what']} (pretend {data['device']}, no GPU)", "",
             f"Mode {data['mode']}, batch {data['batch_size']}; Inductor options {json.dumps(data['inductor_options'])}"
             f"; torch {data['torch']}. Code generation only: the block sizes tuning would pick are not here.", "",
             f"Triton kernels: {len(data['triton_kernels'])} defined, {data['triton_launches']} launches a step. "
             f"Extern calls: {', '.join(f'{k} x{v}' for k, v in data['extern_calls'].items()) or 'none'}. "
             "bf16 buffers as large as a quantized weight (dequantized copies): "
             f"{', '.join(data['bf16_weight_sized_buffers']) or 'none'}.", "",
             "| kernel | kind | sizes | reads | launches |", "|---|---|---|---|---|"]
    for k in data["triton_kernels"]:
        lines.append(f"| {k['name']} | {k['kind']} | {k['size_hints']} | {', '.join(k['reads'])} | {k['launches']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="", work=WORK, model="demo:tiny-llama-chat", shape="",
                          mode="torchao_int8",
                          helps={"mode": "load mode with its options in brackets, as bench/methods_bench.py takes "
                                         "them: torchao_int8, fp8[fp8_activation=none]",
                                 "shape": "random-weight Llama shape (bench/llama_shapes.py) instead of --model"})
    parser.add_argument("--layers", type=int, default=0, help="with --shape: this many layers (0: the shape's)")
    parser.add_argument("--layer", default="", help="IN x OUT, e.g. 4096x14336: one linear layer instead of a model")
    parser.add_argument("--batch-size", type=int, default=1, help="rows of the compiled decode step")
    parser.add_argument("--cache-tokens", type=int, default=64, help="static cache length of the decode step")
    parser.add_argument("--inductor-options", default=None,
                        help="JSON of Inductor settings instead of the method's compile_options ('{}': defaults)")
    args = parser.parse_args()

    from bench.methods_bench import parse_modes
    from quant.methods import METHODS, QuantOptions

    [bench_mode] = parse_modes(args.mode)
    method, options = METHODS[bench_mode.method], QuantOptions(**bench_mode.options)
    inductor_options = (json.loads(args.inductor_options) if args.inductor_options is not None
                        else method.compile_options(options))
    started = time.perf_counter()
    if args.layer:
        in_features, out_features = (int(n) for n in args.layer.lower().split("x"))
        what = f"one {in_features}x{out_features} linear layer"
        gm, inputs = capture_layer(method, options, in_features, out_features, args.batch_size)
        name = f"layer{in_features}x{out_features}"
    else:
        model, name = args.model, args.model.split(":")[-1].rstrip("/").split("/")[-1]
        if args.shape:
            from bench.llama_shapes import SHAPES, build_checkpoint

            shape = args.shape if not args.layers else f"{args.shape}-{args.layers}layers"
            SHAPES.setdefault(shape, {**SHAPES[args.shape], **({"num_hidden_layers": args.layers}
                                                                if args.layers else {})})
            model, name = str(build_checkpoint(shape, args.work / f"llama-{shape}", dtype=torch.bfloat16,
                                               device="cpu")), shape
        what = f"the decode step of {name}"
        gm, inputs = capture_step(model, bench_mode.method, options, args.batch_size, args.cache_tokens,
                                  args.work / "kernels-codegen-probe")
    smallest = quantized_numel(inputs)
    code = cuda_code(gm, inputs, inductor_options)
    del gm, inputs
    stem = result_stem("cuda-codegen", name, bench_mode.label.replace("[", "-").replace("]", "").replace("=", "-")
                       .replace(";", "-"), f"b{args.batch_size}", tag=args.tag)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.output_code.py").write_text(code)
    data = {"what": what, "mode": bench_mode.label, "batch_size": args.batch_size, "device": "H200",
            "inductor_options": inductor_options, "torch": torch.__version__, "seconds": time.perf_counter() - started,
            **summarize(code, smallest)}
    write_results(args.out, stem, data, markdown)


if __name__ == "__main__":
    main()
