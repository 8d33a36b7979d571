"""bf16 autocast against fp32 for one TIGER training step (Beauty size), on whatever bf16 instructions this CPU has.

Answers whether ``sidrec.utils.bf16_autocast`` should turn bf16 on for a CPU with AVX512-BF16 but no AMX. Same
model, same batch (``--batch`` users of ``--history`` items, random codes), forward + backward + fused AdamW,
the two precisions interleaved for ``--rounds`` rounds; the median step of each gives samples/s and the ratio.

    PYTHONPATH=. python benchmarks/probes/bf16_isa.py --threads 2 --out benchmarks/results/bf16_isa.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.utils import adamw, atomic_write_json, cpu_bf16_isa


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--history", type=int, default=8, help="items per history (Beauty's mean is ~7)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = Tiger(TigerConfig(level_sizes=[256, 256, 256, 61])).train()
    opt = adamw(model.parameters(), 1e-3, 0.0)
    rows = []
    for batch in args.batch:
        hist = torch.randint(0, 256, (batch, args.history, 4))
        hist[..., 3] %= 61
        ids, mask = model.encoder_inputs(hist, torch.randint(0, 10_000, (batch,)))
        target = torch.randint(0, 61, (batch, 4))

        def step(bf16: bool, ids=ids, mask=mask, target=target) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.loss(ids, mask, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return time.perf_counter() - start

        step(False), step(True)  # warm-up: oneDNN builds its kernels for this shape
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            for bf16 in (False, True):
                times[bf16].append(step(bf16))
        fp32, bf16 = (batch / statistics.median(times[b]) for b in (False, True))
        rows.append({"batch": batch, "fp32_samples_per_second": round(fp32, 1),
                     "bf16_samples_per_second": round(bf16, 1), "ratio": round(bf16 / fp32, 2)})
        print(rows[-1])
    result = {"cpu": platform.processor() or platform.machine(), "cpu_bf16": cpu_bf16_isa(),
              "threads": args.threads, "history": args.history, "rounds": args.rounds,
              "torch": torch.__version__, "rows": rows,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.out:
        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
