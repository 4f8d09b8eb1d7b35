"""Kernel vs simulated numerics of a quantized SmolLM2 (numbers quoted in notes; not a test).

RTN w4 g64 (every linear on torch's CPU int4 kernel, bf16 activations and scales) versus the
same integer codes computed by the simulated path (fp32 dequantize + matmul), on the first
``--windows`` WikiText-2 test windows; and the batch-1 decode speed of one layer shape.

    flock /work/bench.lock .venv/bin/python benchmarks/quant_kernel_check.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from slimbench.evaluation.base import EvalContext
from slimbench.evaluation.perplexity import Perplexity, PerplexityConfig
from slimbench.kernels.qlinear import QuantLinear
from slimbench.methods.quant.rtn import RTN, RTNConfig
from slimbench.models.adapters import set_path
from slimbench.models.loaders import LoadContext, resolve_model
from slimbench.run import compress


def perplexity(bundle, data_dir: Path, windows: int, seqlen: int) -> float:
    ev = Perplexity(PerplexityConfig(max_windows=windows, seqlen=seqlen))
    ctx = EvalContext(data_dir=data_dir, device="cpu", seed=0, threads=torch.get_num_threads())
    ev.check(ctx)
    result = ev(bundle, ctx)
    return next(m.value for m in result.metrics if m.name == "perplexity")


def resolve_named_model(name: str):
    """(source, loader, loader config, load context) of a model config name, e.g. ``smollm2-135m``."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    ctx = LoadContext(cache_dir=Path("~/.cache/slimbench").expanduser())
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        model_cfg = OmegaConf.to_container(compose(config_name="config", overrides=[f"model={name}"]).model, resolve=True)
    return (*resolve_model(model_cfg, ctx), ctx)


def to_simulated(model) -> None:
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear):
            k = m.in_features
            codes = m.codes()
            sz = m.scales_zeros.float()  # [K/kg, N, 2]: scale and (q-8)·s + zf folded zero
            s = sz[..., 0].t()
            z = torch.round(8 - sz[..., 1].t() / s)  # back to the integer zero point (zf = bf16(s·(8 − z)))
            set_path(model, name, QuantLinear.from_codes(codes, s, z, 4, m.kernel_group, bias=m.bias, layout="packed"))
            assert k == m.in_features


def decode_us(layer, x, repeats=200) -> float:
    with torch.inference_mode():
        for _ in range(10):
            layer(x)
        t = time.perf_counter()
        for _ in range(repeats):
            layer(x)
    return (time.perf_counter() - t) / repeats * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=2048)
    args = parser.parse_args()
    source, loader, cfg, ctx = resolve_named_model(args.model)
    bundle = loader.load(source, cfg, ctx)
    dense_layer = bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0])["up"]
    x1 = torch.randn(1, dense_layer.in_features)
    t_dense = decode_us(dense_layer, x1)
    compress(RTN(RTNConfig(bits=4, group_size=64)), bundle, None)
    q_layer = bundle.adapter.block_linears(bundle.adapter.get_blocks(bundle.model)[0])["up"]
    t_int4 = decode_us(q_layer, x1)
    ppl_kernel = perplexity(bundle, args.data_dir, args.windows, args.seqlen)
    to_simulated(bundle.model)
    ppl_sim = perplexity(bundle, args.data_dir, args.windows, args.seqlen)
    print(f"{args.model} rtn w4 g64, {args.windows} windows: int4 kernel (bf16 act) ppl {ppl_kernel:.4f} | simulated fp32 ppl {ppl_sim:.4f}")
    print(f"up_proj {tuple(dense_layer.weight.shape)} batch-1 matmul: fp32 {t_dense:.0f} us, int4 kernel {t_int4:.0f} us (threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
