"""The fp32 GEMM ceiling of this machine for each library recforge can use (runtime/gemm.py):
GFLOP/s of a 2048^3 product on torch's matmul (MKL in x86 builds) and on oneDNN.

    python benchmarks/gemm_ceiling.py [--threads 2] [--size 2048]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python benchmarks/gemm_ceiling.py
"""

from __future__ import annotations

import argparse
import time

import torch

from recforge.runtime import gemm


def rate(product, n: int, repeats: int = 10) -> float:
    product()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        product()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    a, b = torch.randn(args.size, args.size), torch.randn(args.size, args.size)
    torch_rate = rate(lambda: torch.mm(a, b), args.size)
    onednn_rate = rate(lambda: gemm.linear(a, b, None, "onednn"), args.size)
    print(
        f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, {args.size}^3 fp32: "
        f"torch (MKL) {torch_rate:.0f} GFLOP/s, oneDNN {onednn_rate:.0f} GFLOP/s"
    )


if __name__ == "__main__":
    main()
