"""Does every architecture family's compiled batch prefill (quant.ragged.CompiledPrefill, QUANT_COMPILE_PREFILL=on,
the default since the nineteenth session) pass its own check against the eager prefill with Inductor, in each dtype?

The tests run the check with dynamo's eager backend for every family (tests/unit/test_ragged_prefill.py) and Inductor
for Llama only; this runs Inductor's kernels for all of them (a few seconds each on the CPU with a warm cache, too slow
for every CI run). The families are tests/support/architectures.py's: small random-weight models of each real
config's structure. A family is either checked (passes, or why not: the prefill then stays eager) or refused before
compiling, with the reason the batch path gives.

    python bench/compiled_prefill_families.py --out bench/results                       # CPU
    python bench/compiled_prefill_families.py --device cuda:0 --out bench/results       # GPU
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REQUIRED, bench_parser, result_stem, write_results  # noqa: E402


def main() -> None:
    parser = bench_parser(__doc__, out=REQUIRED, tag="")
    parser.add_argument("--device", default="cpu", help="device map of each load: cpu or cuda:0")
    parser.add_argument("--dtypes", default="fp32,bf16", help="modes, comma-separated")
    args = parser.parse_args()
    from quant import ragged
    from quant.loader import LoadRequest, load_model, release_memory
    from tests.support.architectures import FAMILIES, build

    work = Path(tempfile.mkdtemp(prefix="prefill-families-"))
    rows = []
    for family in FAMILIES:
        folder = build(family, work / family)
        for mode in args.dtypes.split(","):
            started = time.perf_counter()
            loaded = load_model(LoadRequest(str(folder), mode=mode, device_map=args.device))
            refusal = ragged.refusal(loaded) or ragged.compiled_prefill_refusal(loaded.model)
            verdict, checked = refusal, False
            if not refusal:
                torch._dynamo.reset()  # each family's own graphs, not the previous family's recompiled
                try:
                    verdict = ragged.CompiledPrefill(loaded.model, torch.compile).check(loaded.model)
                    checked = True
                except Exception as exc:  # noqa: BLE001 - the table says what failed
                    verdict = f"compiling failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            rows.append({"family": family, "mode": mode, "checked": checked, "passes": checked and verdict is None,
                         "reason": verdict, "seconds": time.perf_counter() - started})
            print(f"{family} {mode}: {'passes' if rows[-1]['passes'] else verdict}", flush=True)
            del loaded
            release_memory()
            if refusal:
                break  # refused before compiling: the same for every dtype
    summary = {"device": args.device, "torch": torch.__version__, "rows": rows}
    write_results(args.out, result_stem("compiled-prefill-families", args.device.split(":")[0], tag=args.tag),
                  summary, markdown)


def markdown(summary: dict) -> str:
    lines = [f"# The compiled batch prefill's check with Inductor, every architecture family, {summary['device']}", "",
             f"torch {summary['torch']}; quant.ragged.CompiledPrefill.check against the eager prefill (last logits "
             "and every layer's keys, relative error <= 0.1) on the families of tests/support/architectures.py "
             "(small random-weight models of each real config's structure). Seconds include the load and a compile "
             "from the kernel cache where it was warm.", "",
             "| family | mode | verdict | s |", "|---|---|---|---|"]
    for r in summary["rows"]:
        verdict = "passes" if r["passes"] else (f"refused before compiling: {r['reason']}" if not r["checked"]
                                               else f"**eager**: {r['reason']}")
        lines.append(f"| {r['family']} | {r['mode']} | {verdict} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
