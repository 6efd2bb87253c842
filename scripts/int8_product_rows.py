"""Times the 0.5B model's int8 weight-only products against the number of input rows, three
ways: PyTorch's packed kernel in calls of at most `PACKED_MAX_ROWS` rows, one float32 product on
the dequantised weight (what `samkv.quantize.Int8Linear` does above `PACKED_MAX_ROWS` rows on the
CPU), and a float32 product on a float32 weight (what `SAMKV_WEIGHTS=float` does).

    python scripts/int8_product_rows.py [--rows 1,64,256,1300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from samkv.quantize import PACKED_MAX_ROWS

# (outputs, inputs) of the stacked query/key/value, output, stacked gate/up and down projections.
SHAPES = ((1152, 896), (896, 896), (2 * 4864, 896), (896, 4864))


def _median_ms(product: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    product(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        product(x)
        times.append((time.perf_counter() - started) * 1000)
    return sorted(times)[len(times) // 2]


def _products(weight: torch.Tensor, scales: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    """The three ways of computing x [rows, inputs] times `weight` [outputs, inputs] (int8)."""
    float_weight = weight.float()
    return (
        lambda x: torch.cat([torch.ops.aten._weight_int8pack_mm(part, weight, scales)
                             for part in x.split(PACKED_MAX_ROWS)]),
        lambda x: F.linear(x.float(), weight.float()) * scales.float(),
        lambda x: F.linear(x.float(), float_weight),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,64,256,1300")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"| outputs × inputs | rows | packed, calls of {PACKED_MAX_ROWS} rows (ms) "
          "| float32 on the dequantised weight (ms) | float32 weight (ms) |")
    print("|---|---|---|---|---|")
    for outputs, inputs in SHAPES:
        weight = torch.randint(-127, 128, (outputs, inputs), dtype=torch.int8)
        products = _products(weight, torch.rand(outputs).to(torch.bfloat16))
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn(rows, inputs).to(torch.bfloat16)
            cells = [f"{_median_ms(product, x, args.repeats):.1f}" for product in products]
            print(f"| {outputs} × {inputs} | {rows} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
