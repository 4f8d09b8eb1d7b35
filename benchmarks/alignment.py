"""Alignment with the reference implementations: Wanda, SparseGPT, GPTQ, AWQ and SVD-LLM against slimbench (issues 23.6, 26).

The references are the authors' code, fetched by the user at pinned commits into one directory
(``--reference DIR``; never vendored, imported at run time):

* ``DIR/wanda``     locuslab/wanda @ 8e8fc87: ``lib/layerwrapper.py`` ``WrappedGPT`` (the per-input
  ‖X_j‖² running mean); the driver ``lib/prune.py::prune_wanda`` (unstructured) is restated here;
* ``DIR/sparsegpt`` IST-DASLab/sparsegpt @ 147d215: ``sparsegpt.py`` ``SparseGPT`` (``add_batch``,
  ``fasterprune``); the driver is ``llama.py::llama_sequential`` without ``--true-sequential``;
* ``DIR/gptq``      IST-DASLab/gptq @ 2d65066: ``GPTQ`` + ``Quantizer`` through
  ``gptq_alignment.reference_gptq`` (llama.py without ``--true-sequential``);
* ``DIR/awq``       mit-han-lab/llm-awq @ d6e797a (d6e797a42b9ef7778de8ee2352116e0f48a78d61; only ``awq/``
  is needed): ``awq/quantize/auto_scale.py`` (``auto_scale_block``, ``apply_scale``), ``auto_clip.py``
  (``auto_clip_block``, ``apply_clip``), ``quantizer.py`` (``pseudo_quantize_tensor``), imported as a
  package whose ``__init__`` files are not run, with the CUDA extension ``awq_inference_engine``
  stubbed (``awq_modules``); the driver ``pre_quant.py::run_awq`` + ``pseudo_quantize_model_weight``
  is restated (``reference_awq``);
* ``DIR/svd_llm``   AIoT-MLSys-Lab/SVD-LLM @ 1c1009a (1c1009a99bea54c22c27a4dd5d9fba7116dc456b):
  ``SVDLLM.py``'s ``profle_svdllm`` (XᵀX per linear, Cholesky) and ``whitening`` (the truncation),
  run as they are (``SVDLLM.py --step 1``); its unused imports and its factored attention/MLP
  modules are stubbed (``svdllm_module``, ``FactorSlots``).

Both sides get the same model (``--model``), the same calibration windows (slimbench's
``CalibrationSet``: ``--nsamples`` x ``--seqlen`` from WikiText-2 validation, ``--seed``), the same
first-block inputs and block arguments (``capture_block_inputs``, the reference's ``Catcher``
under transformers 5), and the same perplexity windows (the first ``--windows`` WikiText-2 test
windows of ``--seqlen``; 0 = the full split). The reference drivers run each block on every
calibration window with hooks on all its ``nn.Linear`` layers at once, compress them, and run the
compressed block again to give the next block its inputs; slimbench runs the method through its
calibration engine (``slimbench.run.compress``), with the same settings (Wanda and SparseGPT
50% unstructured, percdamp 0.01, block 128; GPTQ asymmetric min-max, ``--bits``/``--group-size``,
``true_sequential=false``, ``preserve_zeros=false``: the reference quantizes exact zeros like any weight).
AWQ and SVD-LLM differ in that no compressed output reaches the next block on either side: run_awq
computes a block's output before scaling and clipping it, and ``profle_svdllm`` runs the dense model
(slimbench: ``propagate_error=False`` / the engine's ``collect``). AWQ settings: ``--awq-bits`` 4,
``--awq-group-size`` 64 (the claims preset; llm-awq asserts that every input size is a multiple
of the group), asymmetric min-max grid with zero point, 20 scale ratios, clipping at 10 shrink steps
on 512 tokens (both sides' defaults); llm-awq calibrates on 128 x 512 Pile-val tokens, here both
sides get the WikiText-2 windows, with ``--seqlen 512`` as in the claims preset. SVD-LLM:
``--ratio`` is the fraction of the decoder linears' parameters removed; the reference's command
line means the same (it keeps 1 − ``--ratio`` and takes k = int(m·n·keep/(m+n)); slimbench
k = floor(keep·m·n/(m+n)): equal on every SmolLM2, Llama-7B and tiny-llama shape for ratios 0.1-0.9,
and the script compares the ranks layer by layer).

Each pipeline runs in its own fresh process (one at a time), so that its wall time and peak
memory are measured alike: the compression (calibration capture included) is timed with
``perf_counter`` and its peak resident memory is the process's high-water mark (VmHWM, reset
before the compression; the loaded model is part of it) and its growth over the RSS before.
For the pruning methods the script also compares the masks layer by layer (fraction of weights
whose pruned/kept state differs; the first layer where the two differ); for AWQ the integer codes
(the reference's are clamp(round(w/s) + z) of its ``pseudo_quantize_tensor`` grid) and, since at 4
bits slimbench's layers run torch's int4 CPU kernel (bf16 scales and activations), also the
perplexity of slimbench's grid as float32 linears; for SVD-LLM the rank of every layer.

    flock /work/bench.lock /work/main/.venv/bin/python benchmarks/alignment.py --reference /work/ref \\
        --data-dir /work/shared/data --methods wanda,sparsegpt --out results/alignment/smollm2-135m.json
    flock /work/bench.lock /work/main/.venv/bin/python benchmarks/alignment.py --reference /work/ref \
        --data-dir /work/shared/data --methods awq --nsamples 128 --seqlen 512 --out results/alignment/smollm2-135m-awq.json
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import json
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

from slimbench._system import measure_peak_rss
from slimbench.calibration import capture_block_inputs
from slimbench.data.corpora import resolve_corpus
from slimbench.data.sampler import CalibConfig, build_calibration_set
from slimbench.methods.lowrank.svd_llm import SVDLLM, SVDLLMConfig
from slimbench.methods.pruning.sparsegpt import SparseGPT, SparseGPTConfig
from slimbench.methods.pruning.wanda import Wanda, WandaConfig
from slimbench.methods.quant import awq as awq_module
from slimbench.methods.quant.awq import AWQ, AWQConfig
from slimbench.methods.quant.gptq import GPTQ, GPTQConfig
from slimbench.models.adapters import get_path, set_path
from slimbench.run import compress

from gptq_alignment import TestWindows, block_forward, import_reference, reference_gptq  # noqa: E402  (benchmarks/ on sys.path)
from quant_kernel_check import resolve_named_model  # noqa: E402

PINNED = {"wanda": "locuslab/wanda @ 8e8fc87", "sparsegpt": "IST-DASLab/sparsegpt @ 147d215", "gptq": "IST-DASLab/gptq @ 2d65066",
          "awq": "mit-han-lab/llm-awq @ d6e797a", "svd_llm": "AIoT-MLSys-Lab/SVD-LLM @ 1c1009a"}
PRUNING = ("wanda", "sparsegpt")  # the methods whose masks are compared
SPARSITY, PERCDAMP, BLOCKSIZE = 0.5, 0.01, 128
AWQ_BITS, AWQ_GROUP = 4, 64  # the claims preset (slimbench's default group is 128; llm-awq needs K % group == 0, SmolLM2's 576 is not)
SVD_RATIO = 0.2  # fraction of the decoder linears' parameters removed


# -- the references, imported from the user's checkouts ----------------------------------------------
def load_file(path: Path, name: str, method: str):
    """A module from one file of ``method``'s checkout (its other imports resolved from the file's folder)."""
    if not path.is_file():
        raise SystemExit(f"--reference: {path} missing (a checkout of {PINNED[method]})")
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        with contextlib.redirect_stdout(io.StringIO()):
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def no_cuda_sync() -> None:
    if not torch.cuda.is_available():  # the references call torch.cuda.synchronize()/empty_cache(); a CPU build raises
        torch.cuda.synchronize = lambda *a, **k: None


@torch.no_grad()
def reference_wanda(root: Path, bundle, calib, args) -> None:
    """prune_wanda (unstructured, no variant): WrappedGPT statistics of all linears of a block at once."""
    wrapper = load_file(root / "wanda" / "lib" / "layerwrapper.py", "wanda_layerwrapper", "wanda")
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    hidden = inputs.hidden
    for i, layer in enumerate(bundle.adapter.get_blocks(bundle.model)):
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}  # find_layers
        wrapped = {name: wrapper.WrappedGPT(module) for name, module in subset.items()}
        handles = [subset[name].register_forward_hook(lambda _, inp, out, name=name: wrapped[name].add_batch(inp[0].data, out.data))
                   for name in subset]
        block_forward(layer, hidden, inputs.calls[i])
        for h in handles:
            h.remove()
        for name, module in subset.items():
            metric = torch.abs(module.weight.data) * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1)))  # [out, in]
            mask = torch.zeros_like(metric) == 1
            order = torch.sort(metric, dim=-1, stable=True)
            mask.scatter_(1, order[1][:, : int(metric.shape[1] * args.sparsity)], True)
            module.weight.data[mask] = 0
        hidden = block_forward(layer, hidden, inputs.calls[i])


@torch.no_grad()
def reference_sparsegpt(root: Path, bundle, calib, args) -> None:
    """llama_sequential without --true-sequential: SparseGPT on all linears of a block at once."""
    no_cuda_sync()
    mod = load_file(root / "sparsegpt" / "sparsegpt.py", "sparsegpt_reference", "sparsegpt")
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    hidden = inputs.hidden
    for i, layer in enumerate(bundle.adapter.get_blocks(bundle.model)):
        subset = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}
        gpts = {name: mod.SparseGPT(module) for name, module in subset.items()}
        handles = [subset[name].register_forward_hook(lambda _, inp, out, name=name: gpts[name].add_batch(inp[0].data, out.data))
                   for name in subset]
        block_forward(layer, hidden, inputs.calls[i])
        for h in handles:
            h.remove()
        for name in subset:
            with contextlib.redirect_stdout(io.StringIO()):  # fasterprune prints its time and error
                gpts[name].fasterprune(args.sparsity, prunen=0, prunem=0, percdamp=PERCDAMP, blocksize=BLOCKSIZE)
            gpts[name].free()
        hidden = block_forward(layer, hidden, inputs.calls[i])


def run_reference_gptq(root: Path, bundle, calib, args) -> None:
    ref = import_reference(root / "gptq")
    reference_gptq(ref, bundle, calib, args, "ref", lambda *a: None)


# -- AWQ: llm-awq's search functions under a restated run_awq ----------------------------------------
def awq_modules(root: Path) -> types.SimpleNamespace:
    """llm-awq's ``awq/quantize/{quantizer,auto_scale,auto_clip}.py``, imported as the package ``awq_reference``.

    The package folders are registered without running their ``__init__.py`` (``awq/quantize/__init__.py``
    imports the W8A8 and LLaVA code), and ``awq_inference_engine`` (the CUDA extension, which
    ``qmodule.py`` imports at the top and only ``WQLinear``'s kernels call) is an empty stub.
    """
    base = root / "awq" / "awq"
    for name in ("quantizer", "auto_scale", "auto_clip"):
        if not (base / "quantize" / f"{name}.py").is_file():
            raise SystemExit(f"--reference: {base / 'quantize' / name}.py missing (a checkout of {PINNED['awq']})")
    for name, folder in (("awq_reference", base), ("awq_reference.quantize", base / "quantize"), ("awq_reference.utils", base / "utils")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    sys.modules.setdefault("awq_inference_engine", types.ModuleType("awq_inference_engine"))
    return types.SimpleNamespace(**{n: importlib.import_module(f"awq_reference.quantize.{n}") for n in ("quantizer", "auto_scale", "auto_clip")})


@contextlib.contextmanager
def device_moves_as_on_gpu():
    """The reference's device moves, with a GPU's semantics on a CPU.

    llm-awq moves each module to the GPU and back (``.cuda()`` / ``.cpu()``, which a CPU build
    refuses) and snapshots a sublayer's weights with ``{k: v.cpu() for k, v in state_dict()}``
    before its scale search multiplies the weights in place. On a GPU ``.cpu()`` copies; on a
    CPU it returns the tensor itself, so the snapshot aliases the weights. (That changes nothing
    in effect: the first grid point, α = 0, scales by exactly 1, and later points multiply fresh
    tensors; checked on tiny-llama, same weights and perplexity either way.) Here module moves
    are no-ops, ``Tensor.cuda()`` returns the tensor and ``Tensor.cpu()`` of a CPU tensor copies.
    """
    saved = torch.nn.Module.cuda, torch.nn.Module.cpu, torch.Tensor.cuda, torch.Tensor.cpu
    tensor_cpu = torch.Tensor.cpu
    torch.nn.Module.cuda = torch.nn.Module.cpu = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.cpu = lambda self, *a, **k: self.clone() if self.device.type == "cpu" else tensor_cpu(self, *a, **k)
    try:
        yield
    finally:
        torch.nn.Module.cuda, torch.nn.Module.cpu, torch.Tensor.cuda, torch.Tensor.cpu = saved


def rows_padded(clip_layer):
    """``auto_clip_layer`` searches output rows in batches of 256 or 64 and asserts that the rows
    divide (a memory device: every row and group is searched on its own). A weight with another
    row count (the tiny test model's v_proj has 32) gets zero rows appended, whose results are
    dropped; SmolLM2's linears (192, 576, 1536 rows) need none."""
    def clip(w, input_feat, **kwargs):
        pad = -w.shape[0] % 64
        if not pad:
            return clip_layer(w, input_feat, **kwargs)
        return clip_layer(torch.cat([w, w.new_zeros(pad, w.shape[1])]), input_feat, **kwargs)[: w.shape[0]]
    return clip


def shared_call(calls: list, block: int) -> tuple:
    """The block's (args, kwargs), identical for every calibration window (run_awq runs all windows as one batch)."""
    args, kwargs = calls[0]
    for other_args, other_kwargs in calls[1:]:
        same = len(other_args) == len(args) and other_kwargs.keys() == kwargs.keys() and all(
            _same(a, b) for a, b in zip((*args, *kwargs.values()), (*other_args, *other_kwargs.values())))
        if not same:
            raise SystemExit(f"awq reference: block {block}'s arguments differ between calibration windows (run_awq batches them)")
    return args, kwargs


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a is b or a == b


@torch.no_grad()
def reference_awq(root: Path, bundle, calib, args) -> dict:
    """run_awq (auto_scale and mse_range on), then pseudo_quantize_model_weight.

    Restated: all calibration windows as one batch [N, T, C]; per block, the inputs of every
    ``nn.Linear`` are cached by forward hooks while the *unchanged* block computes the next
    block's input (so, as in the reference, no quantization or clipping reaches later blocks);
    then ``auto_scale_block`` + ``apply_scale`` (which also divides the cached inputs by the
    scales) and ``auto_clip_block`` + ``apply_clip``. After the last block every block linear is
    replaced by ``pseudo_quantize_tensor`` of itself (zero point, ``q_group_size``). Returns
    {"codes": {layer name: the integer codes of that grid, clamp(round(w/s) + z), uint8}}.
    """
    if args.nsamples * args.seqlen < 512:
        raise SystemExit("awq reference: auto_clip_layer samples every (tokens // 512)-th token; needs nsamples x seqlen >= 512")
    ref = awq_modules(root)
    ref.auto_clip.auto_clip_layer = rows_padded(ref.auto_clip.auto_clip_layer)
    q_config = {"zero_point": True, "q_group_size": args.awq_group_size}
    inputs = capture_block_inputs(bundle, calib, torch.device("cpu"))
    inps = torch.cat(inputs.hidden)  # [N, T, C]
    blocks = bundle.adapter.get_blocks(bundle.model)
    with device_moves_as_on_gpu():
        for i, layer in enumerate(blocks):
            call_args, call_kwargs = shared_call(inputs.calls[i], i)
            named = {n: m for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)}  # get_named_linears
            feats: dict[str, list] = {n: [] for n in named}
            handles = [m.register_forward_hook(lambda _, x, y, name=n: feats[name].append(x[0].detach().cpu())) for n, m in named.items()]
            out = layer(inps, *call_args, **call_kwargs)
            for h in handles:
                h.remove()
            input_feat = {n: torch.cat(v, dim=0) for n, v in feats.items()}
            # run_awq passes layer 0's kwargs to every block; a Llama block's are the same (and shared_call checked them)
            scales = ref.auto_scale.auto_scale_block(layer, dict(call_kwargs), w_bit=args.awq_bits, q_config=q_config, input_feat=input_feat)
            ref.auto_scale.apply_scale(layer, scales, input_feat_dict=input_feat)
            clips = ref.auto_clip.auto_clip_block(layer, w_bit=args.awq_bits, q_config=q_config, input_feat=input_feat)
            ref.auto_clip.apply_clip(layer, clips)
            inps = out[0] if isinstance(out, tuple) else out  # run_awq takes `layer(...)[0]`: transformers 4.x blocks return a tuple, 5.x a tensor
        codes = {}
        for i, layer in enumerate(blocks):  # pseudo_quantize_model_weight
            for name, m in ((n, m) for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)):
                w = m.weight.data
                m.weight.data, s, z = ref.quantizer.pseudo_quantize_tensor(w, n_bit=args.awq_bits, get_scale_zp=True, **q_config)
                grouped = w.reshape(-1, args.awq_group_size) if args.awq_group_size > 0 else w
                q = torch.clamp(torch.round(grouped / s.reshape(-1, 1)) + z.reshape(-1, 1), 0, 2**args.awq_bits - 1)
                codes[f"{bundle.adapter.blocks}.{i}.{name}"] = q.reshape(w.shape).to(torch.uint8)
    return {"codes": codes}


# -- SVD-LLM: profle_svdllm and whitening, run as they are -------------------------------------------
class FactorSlots(torch.nn.Module):
    """Stands in for SVD-LLM's ``SVD_LlamaAttention`` / ``SVD_LlamaMLP``: ``whitening`` only assigns
    the ``.weight.data`` of their ``<role>_u_proj`` / ``<role>_v_proj`` and sets them as the layer's
    ``self_attn`` / ``mlp``. (Those modules reimplement transformers 4.3x's Llama attention and do
    not run under the installed transformers; what they compute per linear is ``u(v(x))``.)"""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        for role in ("q", "k", "v", "o", "gate", "up", "down"):
            for side in "uv":
                setattr(self, f"{role}_{side}_proj", types.SimpleNamespace(weight=types.SimpleNamespace(data=None)))


def svdllm_module(root: Path):
    """``SVDLLM.py`` with its imports that ``profle_svdllm``/``whitening`` do not use stubbed:
    ``utils.data_utils`` and ``evaluater`` (dataset download and evaluation; they need ``datasets``),
    ``component.svd_{llama,mistral,opt}`` (the factored modules: ``FactorSlots``); ``utils.model_utils``
    (``find_layers``) is the real file."""
    base = root / "svd_llm"
    stubs = {"utils": types.ModuleType("utils"), "utils.data_utils": types.ModuleType("utils.data_utils"),
             "evaluater": types.ModuleType("evaluater"), "component": types.ModuleType("component")}
    stubs["utils"].__path__ = [str(base / "utils")]
    stubs["component"].__path__ = []
    for name, classes in (("svd_llama", ("SVD_LlamaAttention", "SVD_LlamaMLP")), ("svd_mistral", ("SVD_MistralAttention", "SVD_MistralMLP")),
                          ("svd_opt", ("SVDOPTDecoderLayer",))):
        stubs[f"component.{name}"] = types.ModuleType(f"component.{name}")
        for cls in classes:
            setattr(stubs[f"component.{name}"], cls, FactorSlots)
    saved = {name: sys.modules.get(name) for name in (*stubs, "utils.model_utils")}
    sys.modules.update(stubs)
    try:
        sys.modules["utils.model_utils"] = load_file(base / "utils" / "model_utils.py", "utils.model_utils", "svd_llm")
        return load_file(base / "SVDLLM.py", "svdllm_reference", "svd_llm")
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@torch.no_grad()
def reference_svd_llm(root: Path, bundle, calib, args) -> None:
    """SVDLLM.py --step 1 (whitening only): ``profle_svdllm`` then ``whitening`` at ratio 1 − ``--ratio``.

    ``profle_svdllm`` hooks every decoder linear, runs the whole model on each calibration window
    (the dense model throughout: no compressed outputs are propagated) and sums XᵀX in float32,
    then Cholesky in float64 (eigenvalue-shifted if not positive definite). ``whitening`` factors
    each linear: SVD of W·S in float32, k = int(m·n·ratio/(m+n)) with ratio = 1 − the command
    line's ``--ratio`` (the fraction kept; slimbench's ``ratio`` is the fraction removed and its
    k = floor((1 − ratio)·m·n/(m+n)): the same rank up to the order of the float products, which
    the ranks printed per layer check), stored as U_k√Σ_k and √Σ_k V_kᵀ S⁻¹. Its factors are put
    back into the model's own attention and MLP as two chained linears.
    """
    no_cuda_sync()
    ref = svdllm_module(root)
    if bundle.model.config.model_type not in ("llama", "mistral"):
        raise SystemExit(f"svd_llm reference: only Llama/Mistral blocks are handled here (model_type {bundle.model.config.model_type})")
    layers = bundle.model.model.layers
    loader = [{"input_ids": sample["input_ids"]} for sample in calib.samples()]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress prints, tqdm
        profile = ref.profle_svdllm("llama", bundle.model, loader, "cpu")
        originals = [(layer.self_attn, layer.mlp) for layer in layers]
        ref.whitening("llama", bundle.model, profile, 1 - args.ratio, "cpu")
    for layer, (attn, mlp) in zip(layers, originals):
        for slots, module, roles in ((layer.self_attn, attn, ("q", "k", "v", "o")), (layer.mlp, mlp, ("gate", "up", "down"))):
            for role in roles:
                u, v = getattr(slots, f"{role}_u_proj").weight.data, getattr(slots, f"{role}_v_proj").weight.data  # [m, k], [k, n]
                dense = getattr(module, f"{role}_proj")
                first = torch.nn.Linear(v.shape[1], v.shape[0], bias=False, dtype=v.dtype)
                second = torch.nn.Linear(u.shape[1], u.shape[0], bias=dense.bias is not None, dtype=u.dtype)
                first.weight.data, second.weight.data = v, u
                if dense.bias is not None:
                    second.bias.data = dense.bias.data
                setattr(module, f"{role}_proj", torch.nn.Sequential(first, second))
        layer.self_attn, layer.mlp = attn, mlp


def factor_ranks(bundle) -> dict[str, int | None]:
    """{layer name: rank of its two factors, None where it stayed dense}."""
    out = {}
    for i, block in enumerate(bundle.adapter.get_blocks(bundle.model)):
        for role in bundle.adapter.linears:
            module = get_path(block, bundle.adapter.role_path(role))
            rank = module[0].out_features if isinstance(module, torch.nn.Sequential) else getattr(module, "rank", None)
            out[bundle.adapter.layer_name(i, role)] = rank
    return out


def slimbench_method(name: str, args):
    return {
        "wanda": lambda: Wanda(WandaConfig(sparsity=args.sparsity)),
        "sparsegpt": lambda: SparseGPT(SparseGPTConfig(sparsity=args.sparsity, percdamp=PERCDAMP, blocksize=BLOCKSIZE)),
        "gptq": lambda: GPTQ(GPTQConfig(bits=args.bits, group_size=args.group_size, percdamp=args.percdamp, true_sequential=False,
                                            preserve_zeros=False)),
        "awq": lambda: AWQ(AWQConfig(bits=args.awq_bits, group_size=args.awq_group_size)),  # n_grid 20, clip 0.5 / 512 tokens: the reference's
        "svd_llm": lambda: SVDLLM(SVDLLMConfig(ratio=args.ratio)),
    }[name]()


REFERENCES = {"wanda": reference_wanda, "sparsegpt": reference_sparsegpt, "gptq": run_reference_gptq, "awq": reference_awq,
              "svd_llm": reference_svd_llm}


# -- one pipeline, in a child process --------------------------------------------------------------
def recording_installs() -> list:
    """[(block, path, Quantized)] of every layer slimbench's AWQ installs, recorded before
    installation (on a CPU its int4 layers keep bf16 scales and run bf16 activations)."""
    grids, original = [], awq_module.install

    def install(root, path, module, q, *args, **kwargs):
        grids.append((root, path, q))
        return original(root, path, module, q, *args, **kwargs)

    awq_module.install = install
    return grids


def dense_linear(q) -> torch.nn.Linear:
    """A float32 ``nn.Linear`` holding s·(q − z) of a Quantized grid (no bias: the Llama linears have none)."""
    w = q.dequantize()
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    linear.weight.data = w
    return linear


def pruning_masks(bundle) -> dict[str, torch.Tensor]:
    """{layer name: pruned positions [out, in], bit-packed along the last dim as uint8}."""
    out = {}
    for i, block in enumerate(bundle.adapter.get_blocks(bundle.model)):
        for role, module in bundle.adapter.block_linears(block).items():
            if module.weight.shape[1] % 8:  # the packed masks are compared bit by bit, padding included
                raise SystemExit(f"mask comparison needs in_features % 8 == 0 ({bundle.adapter.layer_name(i, role)})")
            out[bundle.adapter.layer_name(i, role)] = torch.from_numpy(np.packbits((module.weight.data == 0).numpy(), axis=-1))
    return out


def child(args) -> None:
    source, loader, cfg, ctx = resolve_named_model(args.model)
    bundle = loader.load(source, cfg, ctx)
    corpus = resolve_corpus("wikitext2", "validation", str(args.data_dir))
    calib = build_calibration_set(CalibConfig(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed), corpus, bundle.tokenizer)
    ppl = TestWindows(bundle.tokenizer, args.data_dir, args.windows or None, args.seqlen)
    result = {"method": args.method, "pipeline": args.pipeline}
    artifacts = {}
    grids = recording_installs() if args.method == "awq" and args.pipeline == "slimbench" else None
    with measure_peak_rss() as peak:
        start = time.perf_counter()
        if args.pipeline == "reference":
            artifacts = REFERENCES[args.method](args.reference, bundle, calib, args) or {}
        else:
            report = compress(slimbench_method(args.method, args), bundle, calib)
            result.update(execution_path=report.execution_path, engine_wall_time_s=report.wall_time_s, engine_peak_rss_bytes=report.peak_rss_bytes)
        result["compress_s"] = round(time.perf_counter() - start, 2)
    result.update(peak_rss_bytes=peak.peak_rss_bytes, rss_before_bytes=peak.start_rss_bytes, peak_rss_method=peak.method)
    if args.method == "svd_llm":
        result["ranks"] = factor_ranks(bundle)
    if args.method in PRUNING:
        masks = pruning_masks(bundle)
        torch.save(masks, args.masks)
        result["sparsity"] = sum(int(np.unpackbits(m.numpy()).sum()) for m in masks.values()) / sum(m.numel() * 8 for m in masks.values())
    if args.method == "awq":
        blocks = list(bundle.adapter.get_blocks(bundle.model))
        torch.save(artifacts["codes"] if args.pipeline == "reference" else
                   {f"{bundle.adapter.blocks}.{blocks.index(root)}.{path}": q.codes.to(torch.uint8) for root, path, q in grids}, args.masks)
    result["ppl"] = ppl(bundle)
    if grids:  # the same grid as float32 linears: the reference's arithmetic, without the int4 kernel's bf16
        for root, path, q in grids:
            set_path(root, path, dense_linear(q))
        result["ppl_fp32"] = ppl(bundle)
    Path(args.child_out).write_text(json.dumps(result))


# -- the parent: both pipelines per method, one at a time, then the comparison -----------------------
def compare_layers(a: dict, b: dict, kind: str) -> dict:
    """Per layer: the fraction of weights whose state differs between the two pipelines, ``kind``
    "mask" (pruned/kept: bits of the packed masks) or "code" (the integer codes of a quantization
    grid, whose scales are compared through them)."""
    if a.keys() != b.keys():
        raise RuntimeError(f"the pipelines changed different layers ({sorted(a.keys() ^ b.keys())})")
    if kind == "mask":
        rows = {n: float(np.unpackbits(np.bitwise_xor(a[n].numpy(), b[n].numpy()), axis=-1).sum()) / (a[n].numel() * 8) for n in a}
    else:
        rows = {n: float((a[n] != b[n]).float().mean()) for n in a}
    first = next((n for n, d in rows.items() if d > 0), None)
    return {"first_layer_differing": first, "layers_identical": sum(d == 0 for d in rows.values()), "layers": len(rows),
            f"mean_{kind}_diff": sum(rows.values()) / len(rows), f"max_{kind}_diff": max(rows.values()), "per_layer": rows}


def compare_ranks(a: dict, b: dict) -> dict:
    differing = {name: (a[name], b.get(name)) for name in a if a[name] != b.get(name)}
    return {"layers": len(a), "layers_equal": len(a) - len(differing), "differing": differing}


def run_child(args, method: str, pipeline: str, tmp: Path) -> dict:
    out, masks = tmp / f"{method}-{pipeline}.json", tmp / f"{method}-{pipeline}.pt"
    cmd = [sys.executable, __file__, "--child", "--method", method, "--pipeline", pipeline, "--child-out", str(out), "--masks", str(masks),
           "--reference", str(args.reference), "--data-dir", str(args.data_dir), "--model", args.model, "--nsamples", str(args.nsamples),
           "--seqlen", str(args.seqlen), "--seed", str(args.seed), "--windows", str(args.windows), "--sparsity", str(args.sparsity),
           "--bits", str(args.bits), "--group-size", str(args.group_size), "--percdamp", str(args.percdamp),
           "--awq-bits", str(args.awq_bits), "--awq-group-size", str(args.awq_group_size), "--ratio", str(args.ratio)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["masks_path"] = str(masks) if masks.exists() else None
    mib = (result["peak_rss_bytes"] or 0) / 2**20
    print(f"{method:9s} {pipeline:9s} compress {result['compress_s']:8.1f} s | peak RSS {mib:7.0f} MiB | ppl "
          + " | ".join(f"{k} {v:.4f}" for k, v in result["ppl"].items())
          + ("" if "ppl_fp32" not in result else " | same grid as fp32 linears: " + " | ".join(f"{k} {v:.4f}" for k, v in result["ppl_fp32"].items())),
          flush=True)
    return result


def markdown(result: dict) -> str:
    lines = ["| method | perplexity reference | perplexity slimbench | rel. diff | compress s reference | compress s slimbench | "
             "peak RSS MiB reference | peak RSS MiB slimbench | mask or code difference (mean / max per layer) |", "|---" * 9 + "|"]
    for method, r in result["methods"].items():
        ref, slim = r["reference"], r["slimbench"]
        key = next(iter(ref["ppl"]))
        p_ref, p_slim = ref["ppl"][key], slim["ppl"][key]
        fp32 = f" (fp32 linears {slim['ppl_fp32'][key]:.4f})" if "ppl_fp32" in slim else ""
        diff = next(((d[f"mean_{k}_diff"], d[f"max_{k}_diff"]) for k, d in (("mask", r.get("masks")), ("code", r.get("codes"))) if d), None)
        lines.append(f"| {method} | {p_ref:.4f} | {p_slim:.4f}{fp32} | {(p_slim - p_ref) / p_ref:+.2%} | {ref['compress_s']:.1f} | "
                     f"{slim['compress_s']:.1f} | {ref['peak_rss_bytes'] / 2**20:.0f} | {slim['peak_rss_bytes'] / 2**20:.0f} | "
                     + (f"{diff[0]:.4%} / {diff[1]:.4%} |" if diff else "– |"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="folder holding the checkouts wanda/, sparsegpt/, gptq/, awq/, svd_llm/")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="wanda,sparsegpt", help=f"comma-separated: {', '.join(REFERENCES)} (AWQ: calibrate with --seqlen 512 as the claims preset)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=2048, help="calibration and test window length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=8, help="first test windows (0 = the full split)")
    parser.add_argument("--sparsity", type=float, default=SPARSITY)
    parser.add_argument("--bits", type=int, default=3, help="GPTQ")
    parser.add_argument("--group-size", type=int, default=128, help="GPTQ")
    parser.add_argument("--percdamp", type=float, default=PERCDAMP, help="GPTQ")
    parser.add_argument("--awq-bits", type=int, default=AWQ_BITS, help="AWQ")
    parser.add_argument("--awq-group-size", type=int, default=AWQ_GROUP,
                        help="AWQ (64: the claims preset; llm-awq asserts that every linear's input size is a multiple of it)")
    parser.add_argument("--ratio", type=float, default=SVD_RATIO, help="SVD-LLM: fraction of the decoder linears' parameters removed")
    parser.add_argument("--out", type=Path, help="JSON with both pipelines' numbers and the per-layer mask comparison")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", choices=("reference", "slimbench"), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--masks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    methods = args.methods.split(",")
    if unknown := set(methods) - set(REFERENCES):
        raise SystemExit(f"unknown methods {sorted(unknown)} (known: {', '.join(REFERENCES)})")
    for m in methods:  # fail before any model loads
        if not (args.reference / m).is_dir():
            raise SystemExit(f"--reference {args.reference}: no {m}/ (a checkout of {PINNED[m]})")
    print(f"{args.model}; calibration {args.nsamples} x {args.seqlen} (WikiText-2 validation) seed {args.seed}; perplexity on "
          f"{'the full test split' if not args.windows else f'the first {args.windows} test windows'} of {args.seqlen}", flush=True)
    result = {"model": args.model, "nsamples": args.nsamples, "seqlen": args.seqlen, "seed": args.seed, "windows": args.windows or "all",
              "sparsity": args.sparsity, "gptq": {"bits": args.bits, "group_size": args.group_size, "percdamp": args.percdamp},
              "awq": {"bits": args.awq_bits, "group_size": args.awq_group_size}, "svd_llm": {"ratio": args.ratio},
              "references": {m: PINNED[m] for m in methods}, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for method in methods:
            entry = {p: run_child(args, method, p, Path(tmp)) for p in ("reference", "slimbench")}
            if entry["reference"]["masks_path"]:
                kind = "code" if method == "awq" else "mask"
                d = entry[f"{kind}s"] = compare_layers(torch.load(entry["reference"]["masks_path"]), torch.load(entry["slimbench"]["masks_path"]), kind)
                print(f"{method:9s} {kind}s: {d['layers_identical']}/{d['layers']} layers identical, mean fraction differing "
                      f"{d[f'mean_{kind}_diff']:.4%}, first differing layer {d['first_layer_differing']}", flush=True)
            if "ranks" in entry["reference"]:
                entry["ranks"] = compare_ranks(entry["reference"]["ranks"], entry["slimbench"]["ranks"])
                print(f"{method:9s} ranks: {entry['ranks']['layers_equal']}/{entry['ranks']['layers']} layers equal"
                      + (f"; differ: {entry['ranks']['differing']}" if entry["ranks"]["differing"] else ""), flush=True)
            for p in ("reference", "slimbench"):
                entry[p].pop("masks_path")
            result["methods"][method] = entry
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
