"""The UI's words in English and Korean (plain dicts; app.py hands them to gr.I18n).

The team that asked for this tool works in Korean; the browser's language picks the table. Every key is in both
tables (tests/unit/test_ui_strings.py checks it). The English texts that also serve the command line (mode and kernel
descriptions, the BetterTransformer note) are taken from where they are defined, so the two cannot drift apart.

A method option's field (quant.methods.Option) is labelled `option.<field>`; where they exist, `option.<field>.info`
and `option.<field>.placeholder` say more, and `option.<field>.<value>` names a choice (`option.<field>.auto` the
automatic one, value ""); a choice without a key shows its value. A mode's help line is `mode.<name>`, a Quantize
method's name `quantize.method.<name>`.

Korean terms: "Batch" (prompting many prompts at once) is 일괄 처리 and "Placement" (device_map) is 장치 배치, so
that 배치 alone never means both; "batch size" keeps the usual ML term 배치 크기.
"""

from .attention import BETTERTRANSFORMER_NOTE
from .methods import GPTQ_BACKENDS, Mode
from .methods.bitsandbytes import BNB4_KERNELS
from .methods.torchao import FP8_ACTIVATION, TORCHAO_GROUP_SIZE

_NEW_OPTIONS = (TORCHAO_GROUP_SIZE, FP8_ACTIVATION)
"""Options with `option.<field>` labels (and `option.<field>.<value>` for their choices), English from the Option."""
from .hqq import BACKENDS as HQQ_BACKENDS
from .methods import AWQ_BACKENDS

EN = {
    "title": "Quantization Playground",
    "subtitle": "What int8, nf4 and GPTQ buy and cost on a Hugging Face model.",
    "offline.note": "The Hugging Face Hub cannot be reached from this server, so this model is unavailable. The demo "
                    "models that ship with the app are offered instead (and local folders, where the operator named "
                    "QUANT_LOCAL_MODELS_ROOT).",
    "tab.model": "Model", "tab.chat": "Chat", "tab.batch": "Batch", "tab.compare": "Compare", "tab.quantize": "Quantize",
    "model.box": "Model: Hub id, local folder or demo model",
    "revision": "Revision", "token": "Hugging Face token (private or gated repos)",
    "token.placeholder": "used for this load only; never stored",
    "mode": "Mode", "placement": "Placement", "attention": "Attention implementation",
    "device_map.info": "Which device each layer goes to: a strategy of accelerate, one device (cpu, cuda:0), or "
                       "tensor_parallel (every layer sliced over all GPUs, 16/32-bit modes)",
    "max_memory.info": "Most memory each device may take (empty: what is free)",
    "plan.button": "Fits on your GPUs?",
    "plan.intro": "Before loading: where each mode's weights would go with this placement, from the config alone "
                  "(nothing is downloaded but the config, nothing is loaded).",
    "plan.budgets.max_memory": "Planned for device_map={device_map} within max_memory: {budgets}.",
    "plan.budgets.free": "Planned for device_map={device_map} within what is free on this machine now: {budgets}.",
    "plan.budgets.cpu_only": "No GPU on this machine: this is the plan for CPU RAM ({budgets}). Give max_memory "
                             "such as 0=80GiB, 1=80GiB to plan for GPUs this machine does not have.",
    "plan.headroom": "{percent}% of each budget is kept free for what the plan does not count: the CUDA context, "
                     "activations and the KV cache (a long context or a large batch needs more).",
    "plan.col.mode": "mode", "plan.col.verdict": "fits?", "plan.col.total": "total", "plan.col.reason": "why",
    "plan.verdict.gpu": "✅ on GPUs", "plan.verdict.offload": "⚠️ CPU offload", "plan.verdict.cpu": "✅ CPU RAM",
    "plan.verdict.no": "❌ does not fit",
    "plan.device.gpu": "GPU {index}", "plan.device.cpu": "CPU RAM", "plan.device.left": "left over",
    "plan.reason.gpu": "fits on GPU {gpus}, {spare} to spare",
    "plan.reason.offload": "{cpu} of {total} offloaded to CPU RAM: it runs, slower (offloaded layers are copied to "
                           "the GPU at every forward pass)",
    "plan.reason.cpu": "fits in CPU RAM ({total} of {usable} usable)",
    "plan.reason.no": "does not fit: {left} of {total} left over ({usable} usable in all)",
    "plan.reason.peak": "; planned at the load's 16-bit peak (it quantizes after loading; smaller once loaded)",
    "placements.kind.one_gpu": "One GPU", "placements.kind.split": "Split over GPUs (device_map)",
    "placements.kind.tensor_parallel": "Tensor parallel",
    "placements.fits": "fits", "placements.does_not_fit": "does not fit",
    "placements.cost.one_gpu": "No traffic between GPUs; one GPU does all the work.",
    "placements.cost.split": "One copy of the hidden state per boundary ({boundaries} a token); the GPUs take "
                             "turns, one works at a time. In 16/32-bit it decodes compiled, a CUDA graph per GPU "
                             "(8B bf16 on two H200s: 0.98x one GPU's rate).",
    "placements.cost.tensor_parallel": "Every token crosses the GPUs twice per layer (all-reduce): {all_reduces} "
                                       "all-reduces a token over {layers} layers; every GPU works on every token.",
    "placements.title": "Placements for {mode} on these GPUs:",
    "placements.loadable": "Load places the model with the device_map above: one GPU (cuda:0), split (auto, "
                           "balanced) or tensor parallel (tensor_parallel: generation only; perplexity and the "
                           "quality pass need the model in one process).",
    "placements.refused.no_gpu": "no GPU here (name GPUs in max_memory, e.g. 0=80GiB, to plan for them)",
    "placements.refused.gpus": "needs at least 2 GPUs ({gpus} here)",
    "placements.refused.no_plan": "transformers has no tensor-parallel plan (tp_plan) for {architecture}",
    "placements.refused.quantized": "runs 16/32-bit weights only; transformers does not shard {mode}'s quantized "
                                    "weights",
    "placements.refused.not_yet": "transformers can shard {mode}'s weights, but this app's tensor parallelism "
                                  "loads 16/32-bit weights only for now",
    "placements.refused.heads": "{heads} attention heads and {kv_heads} KV heads do not divide by {gpus} GPUs "
                                "(each GPU must hold whole heads)",
    "placements.refused.gpus_off": "off on GPUs unless the operator sets QUANT_TENSOR_PARALLEL_GPUS=on: its decode "
                                   "runs eager, measured on two H200s at 8B bf16 at 10.4 tok/s, 0.06x one GPU "
                                   "compiled, where the split above decodes compiled at 0.98x",
    **{f"mode.{m.value}": m.description for m in Mode},
    "option.int8_skip_modules": "Modules kept unquantized (comma-separated)",
    "option.int8_skip_modules.placeholder": "lm_head is always kept",
    "option.int8_threshold": "LLM.int8 outlier threshold",
    "option.int8_cpu_offload": "fp32 CPU offload for modules placed on the CPU",
    "option.bnb4_double_quant": "Double quantization", "option.bnb4_compute_dtype": "Compute dtype",
    "option.bnb4_quant_storage": "Quant storage",
    "option.bnb4_kernel": "4-bit decode kernel (GPU)",
    **{f"option.bnb4_kernel.{k}": f"{k}: {v}" for k, v in BNB4_KERNELS.items()},
    "option.gptq_backend": "GPTQ kernel",
    "option.gptq_backend.auto": "automatic: int4pack for 4-bit with group size 32-256, else torch",
    **{f"option.gptq_backend.{k}": f"{k}: {v}" for k, v in GPTQ_BACKENDS.items()},
    **{f"option.{o.field}": o.help for o in _NEW_OPTIONS},
    **{f"option.{o.field}.{value}": text for o in _NEW_OPTIONS for value, text in o.choices},
    "option.hqq_bits": "HQQ bits", "option.hqq_group_size": "HQQ group size (weights per scale and zero)",
    "option.hqq_backend": "HQQ kernel",
    "option.hqq_backend.auto": "automatic: int4pack for 4-bit with group size 32-256, else torch",
    **{f"option.hqq_backend.{k}": f"{k}: {v}" for k, v in HQQ_BACKENDS.items()},
    "option.awq_backend": "AWQ kernel",
    "option.awq_backend.auto": "automatic: int4pack for 4-bit with group size 32-256, else torch",
    **{f"option.awq_backend.{k}": f"{k}: {v}" for k, v in AWQ_BACKENDS.items()},
    "attention.default": "(model default)", "attention.note": BETTERTRANSFORMER_NOTE,
    "load": "Load", "measure": "Measure these modes", "measure.modes": "Compare load cost of modes",
    "unload": "Unload selected", "refresh": "Refresh", "loaded": "Loaded models (this tab's model)",
    "loaded.table": "Loaded models you can use (public ones are shared by all sessions)", "report": "Load report",
    "history": "Your loads, side by side",
    # The load report's lines on modules left out of the mode (quant.kept), formatted with str.format.
    "kept.label": "not {mode}",
    "kept.line": "{reason}: {modules}, {parameters} parameters, {size} in {dtype} (e.g. {examples})",
    "kept.module": "{n} module", "kept.modules": "{n} modules",
    "kept.keep_fp32": "kept in float32 by {source} ({attribute}: {patterns})",
    "kept.keep_fp32_unquantized": "left unquantized because {source} lists them in {attribute} ({patterns}), "
                                  "which transformers' quantizers never convert",
    "kept.head": "the output head, which {method} leaves unquantized",
    "kept.head_tied": "the output head, which {method} leaves unquantized (it is the input embeddings' weight, "
                      "held once)",
    "kept.skip_user": "kept unquantized as asked ({attribute}: {patterns})",
    "kept.skip_method": "on {source}'s list of modules not to convert ({attribute}: {patterns})",
    "kept.not_converted": "linear layers {method} did not convert (a shape its kernel does not take: see the "
                          "warnings)",
    "kept.not_linear": "weights outside linear layers ({source}), which {method} does not quantize",
    "kept.wider": "in {dtype}, wider than the mode's {mode_dtype}",
    "answering": "Answering:", "no_model": "*No model loaded yet: load one in the Model tab.*",
    "api.off": "*OpenAI-compatible API: off (the operator turns it on with QUANT_API_KEY).*",
    "api.on": "OpenAI-compatible API (bearer key: QUANT_API_KEY):",
    "model.gone": "*The model this tab was using is no longer loaded (unloaded by another session, or evicted to make "
                  "room): load it again, or pick a loaded one in the Model tab.*",
    "chat.label": "Chat",
    "send": "Send", "stop": "Stop", "regenerate": "Regenerate", "undo": "Undo", "clear": "Clear",
    "message": "Message", "system": "System prompt", "system.placeholder": "e.g. You are a concise assistant.",
    "settings": "Generation settings",
    "max_new_tokens": "Max new tokens", "sample": "Sample (off: greedy)", "seed": "Seed (sampling)",
    "seed.placeholder": "random", "seed.info": "Empty: a new random seed for each reply. A whole number repeats a "
                                               "sampled reply.",
    "temperature": "Temperature", "top_p": "Top-p", "top_k": "Top-k (0: off)",
    "repetition_penalty": "Repetition penalty", "no_repeat": "No-repeat n-gram size",
    "batch.prompts": "Prompts, one per line", "batch.upload": "…or upload .txt / .csv / .jsonl",
    "batch.column": "CSV column / JSONL field", "batch.template": "Apply the chat template to each prompt",
    "batch.system": "System prompt (with the chat template)",
    "batch.note": "Greedy unless sampling is on; generation settings are those of the Chat tab. Batch size is the "
                  "most prompts generating at once. Each row fills in as its prompt finishes; Stop keeps the "
                  "finished rows, and so does the download.",
    "batch.size": "Batch size", "batch.run": "Run batch", "batch.results": "Results", "batch.download": "Download results",
    "compare.intro": "Load one model in several modes, one after another, and measure each on the same prompts: "
                     "memory, speed, perplexity on held-out text, how far each mode's next-token predictions are "
                     "from 16-bit (KL, top-1 agreement), and the answers side by side.",
    "compare.model": "Model",
    "compare.gptq": "GPTQ checkpoints of this model (folder or repo, one per line)",
    "compare.attention": "Attention implementations (each mode with each; none: default)",
    "compare.prompts": "Prompts (one per line; empty: built-in)", "compare.batch": "Batch size (throughput)",
    "compare.tokens": "New tokens per measurement",
    "compare.run": "Compare", "compare.modes": "Modes", "compare.results": "Results",
    "compare.every": "Every mode that runs here",
    "compare.plots": "Each mode relative to the 16-bit baseline (1 = the same): lower memory and perplexity are "
                     "better, higher speeds are better.",
    "compare.plot.memory": "Memory footprint", "compare.plot.decode": "Decode speed (one prompt)",
    "compare.plot.batch": "Batch throughput", "compare.plot.perplexity": "Perplexity",
    "compare.plot.kl": "KL(16-bit ‖ mode) per evaluation window (mean over the window's tokens)",
    "compare.export": "Export (JSON, CSV)",
    "quantize.source": "Source model (unquantized): Hub id, local folder or demo model",
    "quantize.method": "Method", "quantize.run": "Quantize", "quantize.bits": "Bits", "quantize.group": "Group size",
    "quantize.method.gptq": "GPTQ (calibrated, gptqmodel)", "quantize.method.int8": "bitsandbytes int8 (serialized)",
    "quantize.method.nf4": "bitsandbytes nf4 (serialized)",
    "quantize.method.torchao_int8": "torchao int8 weight-only (serialized)",
    "quantize.method.torchao_int4": "torchao int4 weight-only, group size 128 (serialized; on a GPU)",
    "quantize.method.fp8": "torchao fp8 weight-only (serialized; on a GPU of compute capability 8.9+)",
    "quantize.method.awq": "AWQ (calibrated, 4-bit, gptqmodel)",
    "quantize.group.column": "per column (-1)", "quantize.desc_act": "Act-order (desc_act)",
    "quantize.sym": "Symmetric", "quantize.damp": "Damp percent",
    "quantize.samples": "Calibration samples", "quantize.seq_len": "Sample length (tokens)",
    "quantize.calibration": "Calibration data", "quantize.calibration.builtin": "Built-in text (CPython reference)",
    "quantize.calibration.paste": "Paste text", "quantize.calibration.upload": "Upload .txt / .jsonl",
    "quantize.calibration.text": "Calibration text", "quantize.calibration.file": "Calibration file",
    "quantize.table": "Original vs quantized",
    "quantize.layer_errors": "Quantization error per layer and module (gptqmodel's loss; GPTQ and AWQ only)",
    "quantize.files": "The quantized folder's files",
    "push.intro": "### Push to the Hugging Face Hub\nThe folder is on disk first; a failed push can be retried from it.",
    "push.folder": "Folder to push", "push.repo": "Repo id", "push.token": "Hugging Face token (write)",
    "push.token.placeholder": "or log in / set HF_TOKEN; never stored",
    "push.private": "Private", "push.overwrite": "Overwrite an existing repo", "push.run": "Push to the Hub",
}

KO = {
    "title": "양자화 플레이그라운드",
    "subtitle": "Hugging Face 모델에서 int8, nf4, GPTQ가 얻는 것과 잃는 것.",
    "offline.note": "이 서버에서 Hugging Face Hub에 연결할 수 없어 이 모델을 쓸 수 없습니다. 대신 앱에 포함된 데모 "
                    "모델을 제공합니다 (운영자가 QUANT_LOCAL_MODELS_ROOT를 지정했다면 그 아래 로컬 폴더도).",
    "tab.model": "모델", "tab.chat": "채팅", "tab.batch": "일괄 처리", "tab.compare": "비교", "tab.quantize": "양자화",
    "model.box": "모델: Hub ID, 로컬 폴더 또는 데모 모델",
    "revision": "리비전", "token": "Hugging Face 토큰 (비공개·게이트 저장소)",
    "token.placeholder": "이번 로드에만 쓰이며 저장되지 않음",
    "mode": "모드", "placement": "장치 배치", "attention": "어텐션 구현",
    "device_map.info": "각 레이어를 올릴 장치: accelerate의 전략, 단일 장치 (cpu, cuda:0), 또는 tensor_parallel "
                       "(모든 레이어를 모든 GPU에 나눔, 16/32비트 모드)",
    "max_memory.info": "장치별로 쓸 수 있는 최대 메모리 (비우면 남은 메모리)",
    "plan.button": "GPU에 들어갈까요?",
    "plan.intro": "로드하기 전에: 이 장치 배치에서 모드별 가중치가 어디에 놓일지를 설정 파일만으로 계산합니다 "
                  "(설정 파일 외에는 내려받지도 로드하지도 않습니다).",
    "plan.budgets.max_memory": "device_map={device_map}, max_memory 안에서 계획했습니다: {budgets}.",
    "plan.budgets.free": "device_map={device_map}, 지금 이 머신에 남은 메모리 안에서 계획했습니다: {budgets}.",
    "plan.budgets.cpu_only": "이 머신에는 GPU가 없어 CPU 메모리 기준으로 계획했습니다 ({budgets}). 이 머신에 없는 "
                             "GPU로 계획하려면 max_memory를 0=80GiB, 1=80GiB처럼 입력하세요.",
    "plan.headroom": "계획이 세지 않는 것(CUDA 컨텍스트, 활성값, KV 캐시)을 위해 장치마다 예산의 {percent}%를 "
                     "비워 둡니다 (긴 컨텍스트나 큰 배치는 더 필요합니다).",
    "plan.col.mode": "모드", "plan.col.verdict": "들어가나요?", "plan.col.total": "합계", "plan.col.reason": "이유",
    "plan.verdict.gpu": "✅ GPU에", "plan.verdict.offload": "⚠️ CPU 오프로드", "plan.verdict.cpu": "✅ CPU 메모리",
    "plan.verdict.no": "❌ 들어가지 않음",
    "plan.device.gpu": "GPU {index}번", "plan.device.cpu": "CPU 메모리", "plan.device.left": "남는 양",
    "plan.reason.gpu": "GPU {gpus}번에 들어감, {spare} 여유",
    "plan.reason.offload": "{total} 중 {cpu}를 CPU 메모리로 오프로드: 실행되지만 느립니다 (오프로드된 레이어는 "
                           "순전파마다 GPU로 복사됩니다)",
    "plan.reason.cpu": "CPU 메모리에 들어감 (쓸 수 있는 {usable} 중 {total})",
    "plan.reason.no": "들어가지 않음: {total} 중 {left}가 남습니다 (모두 합쳐 {usable} 사용 가능)",
    "plan.reason.peak": "; 로드 중 16비트 최대치로 계획 (로드 후 양자화하므로 로드된 뒤에는 더 작음)",
    "placements.kind.one_gpu": "GPU 한 개", "placements.kind.split": "GPU에 나눠 싣기 (device_map)",
    "placements.kind.tensor_parallel": "텐서 병렬",
    "placements.fits": "들어감", "placements.does_not_fit": "들어가지 않음",
    "placements.cost.one_gpu": "GPU 사이 통신이 없고, GPU 한 개가 모든 일을 합니다.",
    "placements.cost.split": "경계마다 은닉 상태를 한 번 복사합니다 (토큰당 {boundaries}번). GPU들이 차례로 "
                             "일하므로 한 번에 하나만 일합니다. 16/32비트는 GPU마다 CUDA 그래프 하나로 컴파일되어 "
                             "디코드합니다 (H200 두 장에서 8B bf16: GPU 한 장 속도의 0.98배).",
    "placements.cost.tensor_parallel": "토큰마다 레이어당 두 번 GPU 사이를 오갑니다 (all-reduce): {layers}개 "
                                       "레이어에서 토큰당 {all_reduces}번. 모든 GPU가 모든 토큰에 일합니다.",
    "placements.title": "이 GPU들에서 {mode}의 배치 방법:",
    "placements.loadable": "로드는 위의 device_map대로 모델을 싣습니다: GPU 한 개 (cuda:0), 나눠 싣기 (auto, "
                           "balanced), 텐서 병렬 (tensor_parallel: 생성만 됩니다. 퍼플렉시티와 품질 측정은 모델이 "
                           "한 프로세스에 있어야 합니다).",
    "placements.refused.no_gpu": "GPU가 없습니다 (계획하려면 max_memory에 GPU를 적으세요, 예: 0=80GiB)",
    "placements.refused.gpus": "GPU가 2개 이상 필요합니다 (여기에는 {gpus}개)",
    "placements.refused.no_plan": "transformers에 {architecture}의 텐서 병렬 계획(tp_plan)이 없습니다",
    "placements.refused.quantized": "16/32비트 가중치만 됩니다. transformers는 {mode}의 양자화된 가중치를 나누지 "
                                    "못합니다",
    "placements.refused.not_yet": "transformers는 {mode}의 가중치를 나눌 수 있지만, 이 앱의 텐서 병렬은 아직 "
                                  "16/32비트 가중치만 로드합니다",
    "placements.refused.heads": "어텐션 헤드 {heads}개와 KV 헤드 {kv_heads}개가 GPU {gpus}개로 나누어떨어지지 "
                                "않습니다 (GPU마다 헤드를 통째로 가져야 합니다)",
    "placements.refused.gpus_off": "운영자가 QUANT_TENSOR_PARALLEL_GPUS=on을 설정하지 않으면 GPU에서는 꺼져 "
                                   "있습니다: 디코드가 eager로 돌아, H200 두 장에서 8B bf16이 10.4 tok/s로 GPU 한 "
                                   "장의 컴파일 경로의 0.06배였고, 위의 분할은 컴파일되어 0.98배였습니다",
    "mode.fp32": "완전 정밀도 (가중치당 4바이트)", "mode.fp16": "반정밀도 (2바이트)", "mode.bf16": "bfloat16 (2바이트)",
    "mode.int8": "bitsandbytes LLM.int8(): int8 가중치, 이상치 열은 fp16",
    "mode.nf4": "bitsandbytes 4비트 NormalFloat", "mode.fp4": "bitsandbytes 4비트 부동소수점",
    "mode.gptq": "이미 GPTQ로 양자화된 체크포인트",
    "mode.torchao_int8": "torchao int8 가중치 전용: int8 가중치, 행마다 스케일 하나; CPU와 GPU",
    "mode.torchao_int4": "torchao int4 가중치 전용: 4비트 가중치, 그룹마다 스케일과 영점 하나; CPU와 Ampere 이상 "
                         "GPU에서 PyTorch의 int4 커널",
    "mode.fp8": "fp8 (e4m3) 가중치, 행마다 스케일 하나, 가중치 전용 또는 동적 fp8 활성값 (torchao); 연산 능력 8.9 "
                "이상의 GPU",
    "option.torchao_group_size": "int4 그룹 크기 (스케일과 영점 하나가 맡는 가중치 수)",
    "option.torchao_group_size.32": "32: 가장 정확함, 가중치당 0.625바이트",
    "option.torchao_group_size.64": "64: 가중치당 0.5625바이트",
    "option.torchao_group_size.128": "128: 보통의 선택, 가중치당 0.53바이트",
    "option.torchao_group_size.256": "256: 가장 작음, 가중치당 0.516바이트 (GPU 전용)",
    "option.fp8_activation": "fp8 활성값",
    "option.fp8_activation.none": "가중치 전용: fp8 가중치를 행렬곱마다 bf16으로 변환",
    "option.fp8_activation.dynamic": "동적: 실행 중에 토큰마다 활성값을 fp8로 스케일링, fp8 x fp8 행렬곱 "
                                     "(torch._scaled_mm)",
    "option.int8_skip_modules": "양자화하지 않을 모듈 (쉼표로 구분)",
    "option.int8_skip_modules.placeholder": "lm_head는 항상 양자화하지 않음",
    "option.int8_threshold": "LLM.int8 이상치 임계값", "option.int8_cpu_offload": "CPU에 놓인 모듈은 fp32로 CPU 오프로드",
    "option.bnb4_double_quant": "이중 양자화", "option.bnb4_compute_dtype": "연산 dtype",
    "option.bnb4_quant_storage": "양자화 저장 dtype",
    "option.bnb4_kernel": "4비트 디코딩 커널 (GPU)",
    "option.bnb4_kernel.bitsandbytes": "bitsandbytes: bitsandbytes 자체 커널: CPU와 GPU",
    "option.bnb4_kernel.triton": "triton: 같은 4비트 가중치에 대한 quant의 Triton 디코딩 커널 (1-8행): GPU; 실험 단계, "
                                 "아직 더 느림 (H200, 8B에서 0.6배)",
    "option.gptq_backend": "GPTQ 커널",
    "option.gptq_backend.auto": "자동: 그룹 크기 32-256의 4비트는 int4pack, 그 외에는 torch",
    "option.gptq_backend.gptq_torch": "gptq_torch: PyTorch 커널: CPU와 GPU, 빌드 없음; GPU에서 컴파일된 빠른 경로",
    "option.gptq_backend.gptq_int4pack": "gptq_int4pack: PyTorch int4 행렬곱 (tinygemm): CPU와 GPU, 4비트, 그룹 크기 32-256, 빌드 없음; bf16",
    "option.gptq_backend.gptq_triton": "gptq_triton: Triton 커널: GPU, 몇 초 만에 컴파일",
    "option.gptq_backend.gptq_exllama_v2": "gptq_exllama_v2: ExLlamaV2: GPU, 4비트, 처음 쓸 때 빌드 (~30초)",
    "option.gptq_backend.gptq_marlin": "gptq_marlin: Marlin: GPU (Ampere 이상), 4/8비트, 처음 쓸 때 빌드 (~3.5분); 배치에 가장 빠름",
    "mode.hqq": "HQQ: 보정 데이터 없이 8/4/3/2비트, 불러올 때 양자화 (hqq)",
    "mode.awq": "이미 AWQ로 양자화된 체크포인트",
    "option.hqq_bits": "HQQ 비트", "option.hqq_group_size": "HQQ 그룹 크기 (스케일·영점 하나당 가중치 수)",
    "option.hqq_backend": "HQQ 커널",
    "option.hqq_backend.auto": "자동: 그룹 크기 32-256의 4비트는 int4pack, 그 외에는 torch",
    "option.hqq_backend.hqq_int4pack": "hqq_int4pack: PyTorch int4 행렬곱 (tinygemm): CPU와 GPU, 4비트, 그룹 크기 32-256; bf16; 컴파일됨",
    "option.hqq_backend.hqq_torch": "hqq_torch: 호출마다 역양자화한 뒤 행렬곱 (hqq의 PyTorch 백엔드): CPU와 GPU, 모든 비트 수",
    "option.hqq_backend.hqq_gemlite": "hqq_gemlite: gemlite (HQQ의 Triton 커널): GPU, 8/4/2비트",
    "option.awq_backend": "AWQ 커널",
    "option.awq_backend.auto": "자동: 그룹 크기 32-256의 4비트는 int4pack, 그 외에는 torch",
    "option.awq_backend.awq_int4pack": "awq_int4pack: PyTorch int4 행렬곱 (tinygemm): CPU와 GPU, 4비트, 그룹 크기 32-256, 빌드 없음; bf16",
    "option.awq_backend.awq_torch": "awq_torch: gptqmodel의 PyTorch 커널: CPU와 GPU, 호출마다 역양자화, 빌드 없음",
    "option.awq_backend.awq_marlin": "awq_marlin: Marlin: GPU (Ampere 이상), 4/8비트, 처음 쓸 때 빌드 (~3.5분); 배치에 가장 빠름",
    "attention.default": "(모델 기본값)",
    "attention.note": "`model.to_bettertransformer()`를 쓰는 가이드를 보고 오셨나요? 그 API는 transformers 5와 "
                      "optimum 2에서 사라졌습니다. 그 빠른 경로는 이제 PyTorch의 scaled-dot-product attention이며, "
                      "transformers가 기본으로 사용합니다 (어텐션 구현 `sdpa`). 그 효과를 보려면 `eager`를, "
                      "flash-attn이 설치되어 있으면 `flash_attention_2`를 고르세요.",
    "load": "불러오기", "measure": "이 모드들 측정", "measure.modes": "모드별 로드 비용 비교",
    "unload": "선택한 모델 내리기", "refresh": "새로 고침", "loaded": "불러온 모델 (이 탭의 모델)",
    "loaded.table": "사용할 수 있는 로드된 모델 (공개 모델은 모든 세션이 공유)", "report": "로드 리포트",
    "history": "내 로드 기록 비교",
    "kept.label": "{mode} 아님",
    "kept.line": "{reason}: {modules}, 파라미터 {parameters}, {dtype} {size} (예: {examples})",
    "kept.module": "모듈 {n}개", "kept.modules": "모듈 {n}개",
    "kept.keep_fp32": "float32로 유지됨 ({source}의 {attribute}: {patterns})",
    "kept.keep_fp32_unquantized": "양자화되지 않음 ({source}의 {attribute}: {patterns}; transformers의 양자화기는 "
                                  "이 목록의 모듈을 변환하지 않음)",
    "kept.head": "출력 헤드: {method} 방식은 양자화하지 않음",
    "kept.head_tied": "출력 헤드: {method} 방식은 양자화하지 않음 (입력 임베딩과 가중치를 공유: 메모리는 한 번만 "
                      "차지함)",
    "kept.skip_user": "요청대로 양자화하지 않음 ({attribute}: {patterns})",
    "kept.skip_method": "변환 제외 목록에 있음 ({source}의 {attribute}: {patterns})",
    "kept.not_converted": "{method} 방식이 변환하지 않은 선형 레이어 (커널이 받지 않는 크기: 경고 참조)",
    "kept.not_linear": "선형 레이어 밖의 가중치 ({source}): {method} 방식은 양자화하지 않음",
    "kept.wider": "모드의 {mode_dtype}보다 넓은 {dtype}",
    "answering": "답변 모델:", "no_model": "*아직 불러온 모델이 없습니다. 모델 탭에서 불러오세요.*",
    "api.off": "*OpenAI 호환 API: 꺼짐 (운영자가 QUANT_API_KEY로 켭니다).*",
    "api.on": "OpenAI 호환 API (베어러 키: QUANT_API_KEY):",
    "model.gone": "*이 탭에서 쓰던 모델이 더 이상 로드되어 있지 않습니다 (다른 세션이 내렸거나 공간 확보를 위해 내려졌습니다). "
                  "다시 불러오거나 모델 탭에서 로드된 모델을 고르세요.*",
    "chat.label": "채팅",
    "send": "보내기", "stop": "중지", "regenerate": "다시 생성", "undo": "되돌리기", "clear": "지우기",
    "message": "메시지", "system": "시스템 프롬프트", "system.placeholder": "예: 당신은 간결하게 답하는 어시스턴트입니다.",
    "settings": "생성 설정",
    "max_new_tokens": "최대 새 토큰 수", "sample": "샘플링 (끄면 그리디)", "seed": "시드 (샘플링)",
    "seed.placeholder": "무작위", "seed.info": "비우면 답마다 새 무작위 시드. 정수를 넣으면 같은 샘플링 답을 다시 얻습니다.",
    "temperature": "온도", "top_p": "Top-p", "top_k": "Top-k (0: 끔)",
    "repetition_penalty": "반복 페널티", "no_repeat": "반복 금지 n-gram 크기",
    "batch.prompts": "프롬프트 (한 줄에 하나)", "batch.upload": "…또는 .txt / .csv / .jsonl 업로드",
    "batch.column": "CSV 열 / JSONL 필드", "batch.template": "각 프롬프트에 채팅 템플릿 적용",
    "batch.system": "시스템 프롬프트 (채팅 템플릿과 함께)",
    "batch.note": "샘플링을 켜지 않으면 그리디로 생성합니다. 생성 설정은 채팅 탭의 설정을 따릅니다. 배치 크기는 "
                  "동시에 생성하는 프롬프트의 최대 수입니다. 각 행은 그 프롬프트가 끝나는 대로 채워지며, 중지하면 "
                  "끝난 행은 그대로 남고 내려받기에도 들어갑니다.",
    "batch.size": "배치 크기", "batch.run": "일괄 실행", "batch.results": "결과", "batch.download": "결과 내려받기",
    "compare.intro": "한 모델을 여러 모드로 차례로 불러와 같은 프롬프트로 각각 측정합니다: 메모리, 속도, 학습에 "
                     "쓰지 않은 텍스트의 퍼플렉서티, 16비트 대비 다음 토큰 예측의 차이 (KL, top-1 일치율), 그리고 "
                     "나란히 놓은 답변.",
    "compare.model": "모델",
    "compare.gptq": "이 모델의 GPTQ 체크포인트 (폴더 또는 저장소, 한 줄에 하나)",
    "compare.attention": "어텐션 구현 (모든 모드를 각각으로 측정; 선택하지 않으면 기본값)",
    "compare.prompts": "프롬프트 (한 줄에 하나; 비우면 내장 프롬프트)", "compare.batch": "배치 크기 (처리량 측정)",
    "compare.tokens": "측정당 새 토큰 수",
    "compare.run": "비교", "compare.modes": "모드", "compare.results": "결과",
    "compare.every": "여기서 실행되는 모든 모드",
    "compare.plots": "16비트 기준 대비 각 모드 (1 = 같음): 메모리와 퍼플렉서티는 낮을수록, 속도는 높을수록 좋습니다.",
    "compare.plot.memory": "메모리 사용량", "compare.plot.decode": "디코딩 속도 (프롬프트 하나)",
    "compare.plot.batch": "배치 처리량", "compare.plot.perplexity": "퍼플렉서티",
    "compare.plot.kl": "평가 구간별 KL(16비트 ‖ 모드) (구간 토큰의 평균)",
    "compare.export": "내보내기 (JSON, CSV)",
    "quantize.source": "원본 모델 (양자화 전): Hub ID, 로컬 폴더 또는 데모 모델",
    "quantize.method": "방법", "quantize.run": "양자화", "quantize.bits": "비트", "quantize.group": "그룹 크기",
    "quantize.method.gptq": "GPTQ (보정 데이터 사용, gptqmodel)",
    "quantize.method.int8": "bitsandbytes int8 (직렬화하여 저장)",
    "quantize.method.nf4": "bitsandbytes nf4 (직렬화하여 저장)",
    "quantize.method.torchao_int8": "torchao int8 가중치 전용 (직렬화하여 저장)",
    "quantize.method.torchao_int4": "torchao int4 가중치 전용, 그룹 크기 128 (직렬화하여 저장; GPU에서)",
    "quantize.method.fp8": "torchao fp8 가중치 전용 (직렬화하여 저장; 연산 능력 8.9 이상의 GPU에서)",
    "quantize.method.awq": "AWQ (보정 데이터 사용, 4비트, gptqmodel)",
    "quantize.group.column": "열 단위 (-1)", "quantize.desc_act": "활성값 순서 (desc_act)",
    "quantize.sym": "대칭", "quantize.damp": "감쇠 비율 (damp percent)",
    "quantize.samples": "보정 샘플 수", "quantize.seq_len": "샘플 길이 (토큰)",
    "quantize.calibration": "보정 데이터", "quantize.calibration.builtin": "내장 텍스트 (CPython 레퍼런스)",
    "quantize.calibration.paste": "텍스트 붙여넣기", "quantize.calibration.upload": ".txt / .jsonl 업로드",
    "quantize.calibration.text": "보정 텍스트", "quantize.calibration.file": "보정 파일",
    "quantize.table": "원본 대 양자화",
    "quantize.layer_errors": "레이어·모듈별 양자화 오차 (gptqmodel의 손실; GPTQ와 AWQ만)",
    "quantize.files": "양자화된 폴더의 파일",
    "push.intro": "### Hugging Face Hub에 업로드\n폴더는 먼저 디스크에 저장됩니다. 업로드가 실패하면 그 폴더에서 다시 "
                  "시도할 수 있습니다.",
    "push.folder": "업로드할 폴더", "push.repo": "저장소 ID", "push.token": "Hugging Face 토큰 (쓰기)",
    "push.token.placeholder": "또는 로그인하거나 HF_TOKEN 설정; 저장되지 않음",
    "push.private": "비공개", "push.overwrite": "기존 저장소 덮어쓰기", "push.run": "Hub에 업로드",
}
