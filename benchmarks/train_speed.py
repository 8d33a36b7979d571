"""Training throughput of TIGER: samples/s, achieved TFLOP/s (FLOPs counted analytically) and share of bf16 peak.

One training step is exactly the loop body of ``sidrec.training.two_stage.train_recommender`` (the loss through
``LossModule``, AdamW, gradient clipping, bf16 autocast on CUDA, optional ``torch.compile``) on random SID
histories of full length, so every encoder row has ``1 + max_history * Lc`` tokens (real histories are shorter
and padded: the FLOPs counted here are the ones executed).

    PYTHONPATH=. python benchmarks/train_speed.py --device cpu --batch-size 64 --steps 5       # sanity number
    PYTHONPATH=. python benchmarks/train_speed.py --batch-size 1024 --steps 50 [--compile] [--profile]

FLOPs per sample (forward; a training step counts 3x: backward = 2x forward), with T encoder tokens, L = Lc
decoder tokens, d = d_model, i = num_heads * d_kv, f = d_ff, 2 FLOPs per multiply-add:
    encoder layer  2T(4di) + 4T^2 i + 4Tdf
    decoder layer  2L(4di) + 4L^2 i  (self)  +  2L(2di) + 2T(2di) + 4LTi  (cross)  +  4Ldf
    heads          2d * sum(K_l)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from sidrec.models.tiger import Tiger, TigerConfig
from sidrec.training.two_stage import LossModule

# dense bf16 tensor-core peak (TFLOP/s) by device-name substring (NVIDIA datasheets, SXM parts)
BF16_PEAK = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}


def flops_per_sample(cfg: TigerConfig, enc_tokens: int) -> float:
    """Forward FLOPs of one training sample (see the module docstring)."""
    T, L, d, f = enc_tokens, len(cfg.level_sizes), cfg.d_model, cfg.d_ff
    i = cfg.num_heads * cfg.d_kv
    enc = 2 * T * 4 * d * i + 4 * T * T * i + 4 * T * d * f
    dec = 2 * L * 4 * d * i + 4 * L * L * i + 2 * L * 2 * d * i + 2 * T * 2 * d * i + 4 * L * T * i + 4 * L * d * f
    return cfg.num_encoder_layers * enc + cfg.num_decoder_layers * dec + 2 * d * sum(cfg.level_sizes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=50, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--levels", type=int, nargs="+", default=[256, 256, 256, 8])
    ap.add_argument("--max-history", type=int, default=20)
    ap.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA too")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (train.compile)")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops over 5 steps")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the device (default: by name)")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = TigerConfig(level_sizes=args.levels, max_history=args.max_history)  # the TIGER paper's sizes
    model = Tiger(cfg).to(device).train()
    net = torch.compile(LossModule(model)) if args.compile else LossModule(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.035)
    bf16 = device.type == "cuda" and not args.no_bf16

    B = args.batch_size
    g = torch.Generator().manual_seed(0)
    history = torch.stack([torch.randint(0, k, (B, args.max_history), generator=g) for k in cfg.level_sizes], -1)
    target = torch.stack([torch.randint(0, k, (B,), generator=g) for k in cfg.level_sizes], -1)
    ids, mask = model.encoder_inputs(history.to(device), torch.arange(B, device=device))  # (B, T)
    target = target.to(device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = net(ids, mask, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    sync()
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0

    samples_per_s = B * args.steps / seconds
    tflops = 3 * flops_per_sample(cfg, ids.shape[1]) * samples_per_s / 1e12
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK.items() if k in name), None)
    result = {
        "device": name, "torch_threads": torch.get_num_threads(), "batch_size": B, "steps": args.steps,
        "encoder_tokens": ids.shape[1], "parameters": model.num_parameters(), "bf16": bf16,
        "compile": args.compile, "warmup_seconds": round(warmup_s, 2), "seconds": round(seconds, 3),
        "samples_per_s": round(samples_per_s, 1), "gflop_per_sample_step": round(3 * flops_per_sample(
            cfg, ids.shape[1]) / 1e9, 4), "achieved_tflops": round(tflops, 4),
        "share_of_bf16_peak": round(tflops / peak, 4) if peak else None, "last_loss": round(loss.item(), 4),
    }
    print(json.dumps(result, indent=2))

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(5):
                step()
            sync()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=20))


if __name__ == "__main__":
    main()
