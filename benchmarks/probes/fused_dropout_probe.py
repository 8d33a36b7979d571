"""Probe: how much a compiled, fused CPU dropout kernel would gain over ``sidrec.models.dropout`` (issue 15).

Not part of the library. The kernels below draw a counter-based random number (splitmix64 of seed + index) per four
elements, write the output and a uint8 keep mask in one parallel pass, and the backward is one more pass: a
scalar template for fp32 and bf16, and a bf16 kernel written for the compiler's auto-vectorizer (raw bf16 bits,
blocks of 64 elements). It is
built with ``torch.utils.cpp_extension.load_inline`` (needs a C++ compiler and ninja). The timing is
``benchmarks/probes/dropout_cpu.py``'s: forward + backward of a TIGER FFN hidden layer, the paths interleaved.

    PYTHONPATH=. python benchmarks/probes/fused_dropout_probe.py --threads 2     # ~1 min, half of it compiling
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from dropout_cpu import ms_forward_backward  # benchmarks/probes/ is the script's folder
from torch.utils.cpp_extension import load_inline

from sidrec.models.dropout import dropout
from sidrec.utils import atomic_write_json

SOURCE = r'''
#include <torch/extension.h>
#include <ATen/Parallel.h>
static inline uint64_t mix(uint64_t z) {
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}
template <typename T>
static void fwd_kernel(const T* xp, T* yp, uint8_t* mp, int64_t n, uint64_t seed, uint32_t thr, float scale) {
  at::parallel_for(0, (n + 3) / 4, 2048, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint64_t r = mix(seed + (uint64_t)i * 0xD1B54A32D192ED03ULL);
      int64_t j0 = 4 * i;
      if (j0 + 4 <= n) {
        for (int k = 0; k < 4; ++k) {
          uint32_t lane = (uint32_t)((r >> (16 * k)) & 0xFFFF);
          uint8_t keep = lane >= thr;
          mp[j0 + k] = keep;
          yp[j0 + k] = static_cast<T>(keep ? static_cast<float>(xp[j0 + k]) * scale : 0.0f);
        }
      } else {
        for (int k = 0; j0 + k < n; ++k) {
          uint32_t lane = (uint32_t)((r >> (16 * k)) & 0xFFFF);
          uint8_t keep = lane >= thr;
          mp[j0 + k] = keep;
          yp[j0 + k] = static_cast<T>(keep ? static_cast<float>(xp[j0 + k]) * scale : 0.0f);
        }
      }
    }
  });
}
std::vector<torch::Tensor> fwd(torch::Tensor x, double p, int64_t seed) {
  auto xc = x.contiguous();
  auto y = torch::empty_like(xc);
  auto mask = torch::empty(xc.sizes(), xc.options().dtype(torch::kUInt8));
  int64_t n = xc.numel();
  uint32_t thr = (uint32_t) llround(p * 65536.0);
  float scale = 65536.0f / (65536.0f - thr);
  if (xc.scalar_type() == at::kBFloat16)
    fwd_kernel<at::BFloat16>(xc.data_ptr<at::BFloat16>(), y.data_ptr<at::BFloat16>(), mask.data_ptr<uint8_t>(), n, (uint64_t)seed, thr, scale);
  else
    fwd_kernel<float>(xc.data_ptr<float>(), y.data_ptr<float>(), mask.data_ptr<uint8_t>(), n, (uint64_t)seed, thr, scale);
  return {y, mask};
}
template <typename T>
static void bwd_kernel(const T* gp, const uint8_t* mp, T* op, int64_t n, float scale) {
  at::parallel_for(0, n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) op[j] = static_cast<T>(mp[j] ? static_cast<float>(gp[j]) * scale : 0.0f);
  });
}
torch::Tensor bwd(torch::Tensor g, torch::Tensor mask, double scale) {
  auto gc = g.contiguous();
  auto out = torch::empty_like(gc);
  int64_t n = gc.numel();
  if (gc.scalar_type() == at::kBFloat16)
    bwd_kernel<at::BFloat16>(gc.data_ptr<at::BFloat16>(), mask.data_ptr<uint8_t>(), out.data_ptr<at::BFloat16>(), n, (float)scale);
  else
    bwd_kernel<float>(gc.data_ptr<float>(), mask.data_ptr<uint8_t>(), out.data_ptr<float>(), n, (float)scale);
  return out;
}
#include <cstring>
static inline float bf2f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; std::memcpy(&f, &u, 4); return f; }
static inline uint16_t f2bf(float f) { uint32_t u; std::memcpy(&u, &f, 4); u += 0x7FFFu + ((u >> 16) & 1u); return (uint16_t)(u >> 16); }
constexpr int BLK = 64;
std::vector<torch::Tensor> fwd_bf16_vec(torch::Tensor x, double p, int64_t seed) {
  auto xc = x.contiguous();
  TORCH_CHECK(xc.scalar_type() == at::kBFloat16);
  auto y = torch::empty_like(xc);
  auto mask = torch::empty(xc.sizes(), xc.options().dtype(torch::kUInt8));
  int64_t n = xc.numel();
  uint16_t thr = (uint16_t) llround(p * 65536.0);
  float scale = 65536.0f / (65536.0f - thr);
  const uint16_t* xp = (const uint16_t*) xc.data_ptr(); uint16_t* yp = (uint16_t*) y.data_ptr(); uint8_t* mp = mask.data_ptr<uint8_t>();
  int64_t nblk = (n + BLK - 1) / BLK;
  at::parallel_for(0, nblk, 64, [&](int64_t b, int64_t e) {
    uint16_t lanes[BLK];
    for (int64_t blk = b; blk < e; ++blk) {
      int64_t j0 = blk * BLK;
      for (int q = 0; q < BLK / 4; ++q) { uint64_t r = mix((uint64_t)seed + (uint64_t)(j0 / 4 + q) * 0xD1B54A32D192ED03ULL); std::memcpy(lanes + 4 * q, &r, 8); }
      int m = (int)std::min<int64_t>(BLK, n - j0);
      if (m == BLK) {
        #pragma GCC ivdep
        for (int k = 0; k < BLK; ++k) {
          uint8_t keep = lanes[k] >= thr;
          float s = keep ? scale : 0.0f;
          yp[j0 + k] = f2bf(bf2f(xp[j0 + k]) * s);
          mp[j0 + k] = keep;
        }
      } else {
        for (int k = 0; k < m; ++k) {
          uint8_t keep = lanes[k] >= thr;
          float s = keep ? scale : 0.0f;
          yp[j0 + k] = f2bf(bf2f(xp[j0 + k]) * s);
          mp[j0 + k] = keep;
        }
      }
    }
  });
  return {y, mask};
}
torch::Tensor bwd_bf16_vec(torch::Tensor g, torch::Tensor mask, double scale_d) {
  auto gc = g.contiguous();
  auto out = torch::empty_like(gc);
  int64_t n = gc.numel(); float scale = (float) scale_d;
  const uint16_t* gp = (const uint16_t*) gc.data_ptr(); uint16_t* op = (uint16_t*) out.data_ptr(); const uint8_t* mp = mask.data_ptr<uint8_t>();
  at::parallel_for(0, n, 32768, [&](int64_t b, int64_t e) {
    #pragma GCC ivdep
    for (int64_t j = b; j < e; ++j) { float s = mp[j] ? scale : 0.0f; op[j] = f2bf(bf2f(gp[j]) * s); }
  });
  return out;
}
'''


def build(folder: str):
    return load_inline("fused_dropout_probe", cpp_sources=[SOURCE], functions=["fwd", "bwd", "fwd_bf16_vec", "bwd_bf16_vec"],
                       extra_cflags=["-O3", "-march=native", "-fopenmp"], build_directory=folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs="+", default=[256, 27, 1024])
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default="benchmarks/results/fused_dropout_probe.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        ext = build(folder)
        compile_seconds = time.perf_counter() - t0

        class Fused(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x, p, vectorized):
                fwd, ctx.bwd = (ext.fwd_bf16_vec, ext.bwd_bf16_vec) if vectorized else (ext.fwd, ext.bwd)
                y, mask = fwd(x, p, int(torch.randint(0, 2**62, (1,)).item()))
                ctx.save_for_backward(mask)
                ctx.scale = 65536.0 / (65536 - round(p * 65536))
                return y

            @staticmethod
            def backward(ctx, grad):
                return ctx.bwd(grad, ctx.saved_tensors[0], ctx.scale), None, None

        torch.manual_seed(0)
        probe = Fused.apply(torch.ones(1_000_000), args.p, False)
        rate = float((probe == 0).float().mean())
        vec_rate = float((Fused.apply(torch.ones(1_000_003, dtype=torch.bfloat16), args.p, True) == 0).float().mean())
        ms = {}
        for dtype in (torch.float32, torch.bfloat16):
            paths = {"sidrec": lambda x: dropout(x, args.p), "fused_kernel": lambda x: Fused.apply(x, args.p, False)}
            if dtype == torch.bfloat16:
                paths["fused_kernel_vectorized"] = lambda x: Fused.apply(x, args.p, True)
            times = ms_forward_backward(paths, args.shape, dtype, args.rounds, args.reps)
            ms[str(dtype).removeprefix("torch.")] = {
                **times, **{f"speedup_{k}": round(times["sidrec"] / v, 2) for k, v in times.items() if k != "sidrec"}}
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "shape": args.shape, "p": args.p,
              "compile_seconds": round(compile_seconds, 1), "fused_drop_rate": round(rate, 4),
              "vectorized_drop_rate": round(vec_rate, 4),
              "ms_forward_backward": ms,
              "command": "PYTHONPATH=. python benchmarks/probes/fused_dropout_probe.py " + " ".join(
                  f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                  for k, v in vars(args).items() if k != "out")}
    print(result)
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
