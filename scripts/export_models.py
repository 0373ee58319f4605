#!/usr/bin/env python3
"""Export the real-model corpus with torch.onnx.export (TorchScript AND dynamo exporters).

    /work/venv-export/bin/python scripts/export_models.py OUT_DIR [--models resnet50,bert] \
        [--exporters ts,dynamo] [--structure-dir tests/models] [--list]

For every model of the coverage set and every exporter: export (opset 17 asked; the dynamo exporter
keeps 18 when it cannot convert down, and the opset actually written is recorded), with the batch
dimension dynamic and the sequence length / spatial size dynamic where the family has them. The
full ONNX (random weights, fixed seed) goes to OUT_DIR/<model>-<ts|dynamo>.onnx (never into the
repository); a structure-only copy (tests/model_corpus.strip_model) goes to tests/models/. Failures
are recorded, not hidden: OUT_DIR/export_log.json and tests/models/exports.json list every attempt.

Needs torch + torchvision + transformers (+ onnx, onnxscript; diffusers optional). Runs on torch
2.11+ (the dev venv has torch 2.13 CPU). Also writes the ONNX-model-zoo reconstructions
(scripts/zoo_classics.py), which need only onnx.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))


from model_corpus import strip_model  # noqa: E402

SEED = 0
SAMPLE_BATCH = 2            # export-time batch (not 1: torch.export specializes 0/1-sized dims)


# ------------------------------------------------------------------------------------------ helpers
def import_torchvision():
    """Import torchvision even when its compiled ops do not load (a CUDA torchvision wheel beside a
    CPU torch): the model definitions need no custom ops, only the fake-kernel registrations fail."""
    try:
        import torchvision
        return torchvision
    except (RuntimeError, OSError) as e:
        if "torchvision" not in str(e):
            raise
    import torch

    for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
        del sys.modules[k]
    orig = torch.library.register_fake

    def lenient(op, *a, **k):
        if isinstance(op, str) and op.startswith("torchvision::"):
            return (lambda f: f) if not a else None
        return orig(op, *a, **k)

    torch.library.register_fake = lenient
    try:
        import torchvision
    finally:
        torch.library.register_fake = orig
    return torchvision


def perturb_norms(model, seed: int = SEED) -> None:
    """Trained-looking normalization parameters (random init leaves BN as identity: 1/0/0/1), so
    the small initializers the structure copies keep verbatim are not degenerate."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.8)
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@dataclass
class In:
    name: str
    dims: list            # int (static) or a logical dim name: batch / seq / height / width / samples
    dtype: str = "float32"
    typical: dict = field(default_factory=lambda: {"kind": "float"})


@dataclass
class Spec:
    name: str
    family: str
    source: str
    make: Callable[[], Any]                  # -> torch.nn.Module taking the inputs positionally
    inputs: list[In]
    outputs: list[str]
    out_dims: dict = field(default_factory=dict)   # output -> {axis: logical dim} (TorchScript dynamic_axes)
    sample: dict = field(default_factory=dict)     # logical dim -> export-time size
    ranges: dict = field(default_factory=dict)     # logical dim -> (min, opt, max) for the profile
    notes: str = ""


RANGES = {"batch": (1, 1, 8)}


def _tv(name: str, **kw):
    def make():
        tv = import_torchvision()
        return tv.models.get_model(name, weights=None, **kw)
    return make



def _wrap(fn: Callable[..., Any], module):
    """``module`` whose forward is ``fn(module, *inputs)`` (set by named_forward, no wrapper module:
    parameter names stay as the library has them)."""
    module._export_fn = fn
    return module


def named_forward(module, names: list[str]):
    """Give ``module`` a forward whose parameters are the ONNX input names (torch.export maps
    ``dynamic_shapes`` by parameter name) by switching it to a subclass of its own class."""
    fn = getattr(module, "_export_fn", None)
    base = type(module)
    src = (f"def forward(self, {', '.join(names)}):\n"
           f"    return (_fn(lambda *a, **k: _base.forward(self, *a, **k), {', '.join(names)}) if _fn is not None else _base.forward(self, {', '.join(names)}))\n")
    ns: dict[str, Any] = {"_fn": fn, "_base": base}
    exec(src, ns)  # noqa: S102 - a generated two-line forward with identifier parameter names
    module.__class__ = type(base.__name__, (base,), {"forward": ns["forward"], "__module__": base.__module__})
    return module


# ------------------------------------------------------------------------------------------ models
IMG = In("input", ["batch", 3, 224, 224], typical={"kind": "image"})


def classification() -> list[Spec]:
    out = []
    for name, kw in (("resnet50", {}), ("densenet121", {}), ("efficientnet_b0", {}), ("mobilenet_v2", {}),
                     ("mobilenet_v3_large", {}), ("mnasnet1_0", {}), ("regnet_y_400mf", {}),
                     ("shufflenet_v2_x1_0", {}), ("googlenet", {"aux_logits": False, "init_weights": True}),
                     ("convnext_tiny", {}), ("vit_b_16", {}), ("swin_t", {})):
        out.append(Spec(name, "classification", f"torchvision.models.{name}(weights=None{''.join(f', {k}={v}' for k, v in kw.items())})",
                        _tv(name, **kw), [IMG], ["logits"], {"logits": {0: "batch"}}))
    return out


def segmentation() -> list[Spec]:
    out = []
    for name in ("deeplabv3_resnet50", "fcn_resnet50"):
        def make(name=name):
            tv = import_torchvision()
            m = tv.models.get_model(name, weights=None, weights_backbone=None, aux_loss=False, num_classes=21)
            return _wrap(lambda m, x: m(x)["out"], m)
        out.append(Spec(name, "segmentation", f"torchvision.models.segmentation.{name}(weights=None, "
                        "weights_backbone=None, aux_loss=False, num_classes=21) -> ['out']", make,
                        [In("input", ["batch", 3, "height", "width"], typical={"kind": "image"})], ["out"],
                        {"out": {0: "batch", 2: "height", 3: "width"}}, sample={"height": 256, "width": 320},
                        ranges={"height": (128, 256, 512), "width": (128, 320, 512)}))
    return out


def transformers_models() -> list[Spec]:
    specs = []

    def bert():
        from transformers import BertConfig, BertModel
        cfg = BertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=1024, max_position_embeddings=512, type_vocab_size=2)
        return _wrap(lambda m, ids, mask, tt: (lambda o: (o.last_hidden_state, o.pooler_output))(
            m(input_ids=ids, attention_mask=mask, token_type_ids=tt)), BertModel(cfg))
    seq = {"seq": 16}
    seqr = {"seq": (1, 128, 512)}
    specs.append(Spec("bert", "transformers-encoder",
                      "transformers.BertModel(BertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, "
                      "num_attention_heads=4, intermediate_size=1024)), default attention implementation", bert,
                      [In("input_ids", ["batch", "seq"], "int64", {"kind": "input_ids", "vocab": 1024}),
                       In("attention_mask", ["batch", "seq"], "int64", {"kind": "attention_mask"}),
                       In("token_type_ids", ["batch", "seq"], "int64", {"kind": "token_type_ids"})],
                      ["last_hidden_state", "pooler_output"],
                      {"last_hidden_state": {0: "batch", 1: "seq"}, "pooler_output": {0: "batch"}}, seq, seqr))

    def hf_vit():
        from transformers import ViTConfig, ViTForImageClassification
        cfg = ViTConfig(hidden_size=192, num_hidden_layers=4, num_attention_heads=3, intermediate_size=768,
                        image_size=224, patch_size=16, num_labels=1000)
        return _wrap(lambda m, x: m(pixel_values=x).logits, ViTForImageClassification(cfg))
    specs.append(Spec("hf_vit", "transformers-encoder",
                      "transformers.ViTForImageClassification(ViTConfig(hidden_size=192, num_hidden_layers=4, "
                      "num_attention_heads=3, intermediate_size=768, num_labels=1000))", hf_vit,
                      [In("pixel_values", ["batch", 3, 224, 224], typical={"kind": "image"})], ["logits"],
                      {"logits": {0: "batch"}}))

    def gpt2():
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=1024, n_positions=1024, n_embd=256, n_layer=4, n_head=4, use_cache=False)
        return _wrap(lambda m, ids, mask: m(input_ids=ids, attention_mask=mask, use_cache=False).logits,
                     GPT2LMHeadModel(cfg))
    specs.append(Spec("gpt2", "transformers-decoder",
                      "transformers.GPT2LMHeadModel(GPT2Config(vocab_size=1024, n_embd=256, n_layer=4, n_head=4, "
                      "use_cache=False)) -> logits", gpt2,
                      [In("input_ids", ["batch", "seq"], "int64", {"kind": "input_ids", "vocab": 1024}),
                       In("attention_mask", ["batch", "seq"], "int64", {"kind": "attention_mask"})],
                      ["logits"], {"logits": {0: "batch", 1: "seq"}}, seq, {"seq": (1, 128, 1024)}))

    def wav2vec2():
        from transformers import Wav2Vec2Config, Wav2Vec2Model
        cfg = Wav2Vec2Config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                             conv_dim=(128,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16,
                             feat_extract_norm="group", do_stable_layer_norm=False)
        return _wrap(lambda m, x: m(input_values=x).last_hidden_state, Wav2Vec2Model(cfg))
    specs.append(Spec("wav2vec2", "speech-encoder",
                      "transformers.Wav2Vec2Model(Wav2Vec2Config(hidden_size=256, num_hidden_layers=4, "
                      "conv_dim=(128,)*7, feat_extract_norm='group')) -> last_hidden_state", wav2vec2,
                      [In("input_values", ["batch", "samples"], typical={"kind": "audio"})], ["last_hidden_state"],
                      {"last_hidden_state": {0: "batch", 1: "frames"}}, {"samples": 16000},
                      {"samples": (1600, 16000, 160000)}))

    def whisper():
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder
        cfg = WhisperConfig(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024,
                            num_mel_bins=80, max_source_positions=1500)
        return _wrap(lambda m, x: m(input_features=x).last_hidden_state, WhisperEncoder(cfg))
    specs.append(Spec("whisper_encoder", "speech-encoder",
                      "transformers WhisperEncoder(WhisperConfig(d_model=256, encoder_layers=4, encoder_attention_heads=4, "
                      "num_mel_bins=80, max_source_positions=1500)) -> last_hidden_state", whisper,
                      [In("input_features", ["batch", 80, 3000], typical={"kind": "float"})], ["last_hidden_state"],
                      {"last_hidden_state": {0: "batch"}},
                      notes="Whisper's encoder checks that the mel length is exactly 2*max_source_positions: only "
                            "the batch is dynamic"))
    return specs


def unets() -> list[Spec]:
    specs = []

    def tiny_unet():
        import torch
        from torch import nn
        import torch.nn.functional as F

        class Res(nn.Module):
            def __init__(self, ci, co, temb):
                super().__init__()
                self.n1, self.c1 = nn.GroupNorm(8, ci), nn.Conv2d(ci, co, 3, padding=1)
                self.t = nn.Linear(temb, co)
                self.n2, self.c2 = nn.GroupNorm(8, co), nn.Conv2d(co, co, 3, padding=1)
                self.skip = nn.Conv2d(ci, co, 1) if ci != co else nn.Identity()

            def forward(self, x, t):
                h = self.c1(F.silu(self.n1(x))) + self.t(F.silu(t))[:, :, None, None]
                return self.skip(x) + self.c2(F.silu(self.n2(h)))

        class Attn(nn.Module):
            def __init__(self, c, heads=4):
                super().__init__()
                self.heads, self.norm = heads, nn.GroupNorm(8, c)
                self.qkv, self.proj = nn.Conv2d(c, 3 * c, 1), nn.Conv2d(c, c, 1)

            def forward(self, x):
                b, c, h, w = x.shape
                q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
                a = torch.softmax(q.transpose(-1, -2) @ k / math.sqrt(c // self.heads), dim=-1)
                return x + self.proj((v @ a.transpose(-1, -2)).reshape(b, c, h, w))

        class TinyUNet(nn.Module):
            def __init__(self, ch=(32, 64, 128), temb=128):
                super().__init__()
                self.temb = temb
                self.tmlp = nn.Sequential(nn.Linear(temb, temb), nn.SiLU(), nn.Linear(temb, temb))
                self.inc = nn.Conv2d(3, ch[0], 3, padding=1)
                self.d1, self.down1 = Res(ch[0], ch[0], temb), nn.Conv2d(ch[0], ch[0], 3, stride=2, padding=1)
                self.d2, self.down2 = Res(ch[0], ch[1], temb), nn.Conv2d(ch[1], ch[1], 3, stride=2, padding=1)
                self.d3, self.a3 = Res(ch[1], ch[2], temb), Attn(ch[2])
                self.down3 = nn.Conv2d(ch[2], ch[2], 3, stride=2, padding=1)
                self.mid1, self.mida, self.mid2 = Res(ch[2], ch[2], temb), Attn(ch[2]), Res(ch[2], ch[2], temb)
                self.up3 = nn.ConvTranspose2d(ch[2], ch[2], 4, stride=2, padding=1)       # ConvTranspose
                self.u3, self.ua3 = Res(2 * ch[2], ch[1], temb), Attn(ch[1])
                self.up2 = nn.Conv2d(ch[1], ch[1], 3, padding=1)                          # nearest + conv
                self.u2 = Res(2 * ch[1], ch[0], temb)
                self.up1 = nn.Conv2d(ch[0], ch[0], 3, padding=1)                          # bilinear + conv
                self.u1 = Res(2 * ch[0], ch[0], temb)
                self.out_norm, self.out = nn.GroupNorm(8, ch[0]), nn.Conv2d(ch[0], 3, 3, padding=1)

            def forward(self, x, t):
                half = self.temb // 2
                f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=x.device) / half)
                e = t[:, None].float() * f[None]
                t = self.tmlp(torch.cat([torch.sin(e), torch.cos(e)], dim=1))
                h1 = self.d1(self.inc(x), t)
                h2 = self.d2(self.down1(h1), t)
                h3 = self.a3(self.d3(self.down2(h2), t))
                h = self.mid2(self.mida(self.mid1(self.down3(h3), t)), t)
                h = self.ua3(self.u3(torch.cat([self.up3(h), h3], 1), t))
                h = self.u2(torch.cat([self.up2(F.interpolate(h, scale_factor=2.0, mode="nearest")), h2], 1), t)
                h = self.u1(torch.cat([self.up1(F.interpolate(h, scale_factor=2.0, mode="bilinear",
                                                             align_corners=False)), h1], 1), t)
                return self.out(F.silu(self.out_norm(h)))

        return TinyUNet()
    sp = {"height": 64, "width": 96}
    rng = {"height": (32, 64, 256), "width": (32, 64, 256)}
    specs.append(Spec("unet_tiny", "diffusion-unet",
                      "scripts/export_models.py TinyUNet: GroupNorm, SiLU, sinusoidal timestep MLP, stride-2 Conv "
                      "down, ConvTranspose / nearest / bilinear up, 3 self-attention blocks, skip Concat", tiny_unet,
                      [In("sample", ["batch", 3, "height", "width"], typical={"kind": "image"}),
                       In("timestep", ["batch"], typical={"kind": "timestep"})],
                      ["out"], {"out": {0: "batch", 2: "height", 3: "width"}}, sp, rng,
                      notes="height and width must be multiples of 8"))

    def sd_unet():
        from diffusers import UNet2DConditionModel
        m = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
                                 block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=64,
                                 attention_head_dim=8,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
        return _wrap(lambda m, x, t, c: m(x, t, encoder_hidden_states=c, return_dict=False)[0], m)
    specs.append(Spec("sd_unet", "diffusion-unet",
                      "diffusers.UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, "
                      "norm_num_groups=8, cross_attention_dim=64, attention_head_dim=8, CrossAttnDown/Down, "
                      "Up/CrossAttnUp)", sd_unet,
                      [In("sample", ["batch", 4, "height", "width"], typical={"kind": "image"}),
                       In("timestep", ["batch"], typical={"kind": "timestep"}),
                       In("encoder_hidden_states", ["batch", 77, 64], typical={"kind": "float"})],
                      ["out"], {"out": {0: "batch", 2: "height", 3: "width"}}, {"height": 32, "width": 48},
                      {"height": (16, 64, 128), "width": (16, 64, 128)},
                      notes="needs diffusers; height and width must be multiples of 2"))
    return specs


def all_specs() -> list[Spec]:
    return classification() + segmentation() + transformers_models() + unets()


# ------------------------------------------------------------------------------------------ export
def sample_inputs(spec: Spec):
    import torch

    g = torch.Generator().manual_seed(SEED)
    sizes = {"batch": SAMPLE_BATCH, **spec.sample}
    args = []
    for inp in spec.inputs:
        shape = [d if isinstance(d, int) else sizes[d] for d in inp.dims]
        kind = inp.typical["kind"]
        if kind == "input_ids":
            t = torch.randint(0, inp.typical["vocab"], shape, generator=g)
        elif kind == "attention_mask":
            t = torch.ones(shape, dtype=torch.int64)
            t[1:, -3:] = 0
        elif kind == "token_type_ids":
            t = torch.zeros(shape, dtype=torch.int64)
        elif kind == "timestep":
            t = torch.rand(shape, generator=g) * 1000
        else:
            t = torch.randn(shape, generator=g)
        args.append(t.to(getattr(torch, inp.dtype)))
    return tuple(args)


def export_one(spec: Spec, module, args, exporter: str, path: Path) -> dict[str, Any]:
    import torch

    names = [i.name for i in spec.inputs]
    if exporter == "ts":
        axes = {i.name: {k: d for k, d in enumerate(i.dims) if isinstance(d, str)} for i in spec.inputs}
        axes.update({o: dict(v) for o, v in spec.out_dims.items()})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=names, output_names=spec.outputs,
                              opset_version=17, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
        return {"requested_opset": 17, "dynamic_shapes": "dynamic_axes"}
    Dim = torch.export.Dim
    rng = {**RANGES, **spec.ranges}
    named = {d: Dim(d, min=max(1, rng[d][0]) if d != "batch" else 1, max=rng[d][2]) for i in spec.inputs
             for d in i.dims if isinstance(d, str)}
    attempts = [("named Dims", {d: named[d] for d in named}),
                ("Dim.AUTO for non-batch dims", {d: (named[d] if d == "batch" else Dim.AUTO) for d in named})]
    errors = []
    for label, dims in attempts:
        ds = {i.name: ({k: dims[d] for k, d in enumerate(i.dims) if isinstance(d, str)} or None) for i in spec.inputs}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, args, str(path), input_names=names, output_names=spec.outputs,
                                  opset_version=17, dynamo=True, dynamic_shapes=ds, external_data=False,
                                  verbose=False)
            info = {"requested_opset": 17, "dynamic_shapes": label, "earlier_errors": errors}
            try:   # the exporter's down-conversion to 17 can leave opset-18 attributes behind
                import onnx
                onnx.checker.check_model(str(path), full_check=True)
            except Exception as e:  # noqa: BLE001 - onnx.checker.ValidationError and friends
                info["opset17_invalid"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, args, str(path), input_names=names, output_names=spec.outputs,
                                      opset_version=18, dynamo=True, dynamic_shapes=ds, external_data=False,
                                      verbose=False)
                info["requested_opset"] = 18
            return info
        except Exception as e:  # noqa: BLE001 - record and try the next form
            errors.append(f"{label}: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
            if label == attempts[-1][0]:
                raise
    raise AssertionError("unreachable")


def describe_inputs(model, spec: Spec) -> tuple[list[dict], list[dict]]:
    inits = {i.name for i in model.graph.initializer}
    rng = {**RANGES, **spec.ranges}
    by_name = {i.name: i for i in spec.inputs}
    ins = []
    for gi in model.graph.input:
        if gi.name in inits:
            continue
        dims = []
        for d in gi.type.tensor_type.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
        s = by_name.get(gi.name)
        logical = s.dims if s is not None and len(s.dims) == len(dims) else [None] * len(dims)
        prof = None
        if any(not isinstance(d, int) for d in dims):
            lo, op, hi = [], [], []
            for d, lg in zip(dims, logical):
                if isinstance(d, int):
                    lo.append(d), op.append(d), hi.append(d)
                else:
                    r = rng.get(lg, (1, 1, 8))
                    lo.append(r[0]), op.append(r[1]), hi.append(r[2])
            prof = {"min": lo, "opt": op, "max": hi}
        from onnx import helper
        ins.append({"name": gi.name, "dtype": helper.tensor_dtype_to_np_dtype(gi.type.tensor_type.elem_type).name,
                    "shape": dims, "dims": logical, "profile": prof,
                    "typical": (s.typical if s is not None else {"kind": "float"})})
    outs = []
    for go in model.graph.output:
        dims = [int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None)
                for d in go.type.tensor_type.shape.dim]
        outs.append({"name": go.name, "shape": dims})
    return ins, outs


def finish(model, name: str, meta: dict, out_dir: Path, structure_dir: Path | None, full_path: Path | None) -> dict:
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    meta["opset"] = int(opset)
    meta["ir_version"] = int(model.ir_version)
    meta["nodes"] = len(model.graph.node)
    meta["op_types"] = sorted({f"{n.domain + '::' if n.domain not in ('', 'ai.onnx') else ''}{n.op_type}"
                               for n in model.graph.node})
    meta["functions"] = len(model.functions)
    if full_path is None:
        full_path = out_dir / f"{name}.onnx"
        onnx.save_model(model, str(full_path))
    rec = {"name": name, "full": str(full_path), "full_bytes": full_path.stat().st_size, "opset": meta["opset"],
           "nodes": meta["nodes"]}
    if structure_dir is not None:
        structure_dir.mkdir(parents=True, exist_ok=True)
        m2 = onnx.load(str(full_path))
        strip_model(m2, meta)
        sp = structure_dir / f"{name}.onnx"
        onnx.save_model(m2, str(sp))
        rec["structure_bytes"] = sp.stat().st_size
        rec["stripped"] = sum(1 for _ in json.loads(m2.metadata_props[-1].value)["stripped"])
    return rec


def run(args) -> int:
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    structure_dir = Path(args.structure_dir) if args.structure_dir else None
    log_path = out_dir / "export_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    exporters = args.exporters.split(",")
    wanted = set(args.models.split(",")) if args.models else None
    import onnx

    # zoo reconstructions first (no torch needed)
    if "zoo" in exporters:
        import zoo_classics

        for name, (kind, opset, zpath) in zoo_classics.ZOO.items():
            if wanted and name not in wanted and "zoo" not in wanted:
                continue
            t0 = time.time()
            m = zoo_classics.build(name, SEED)
            ins = [{"name": "data_0", "dtype": "float32", "shape": [1, 3, 224, 224], "dims": [1, 3, 224, 224],
                    "profile": None, "typical": {"kind": "image"}}]
            outs = [{"name": o.name, "shape": [d.dim_value for d in o.type.tensor_type.shape.dim]} for o in m.graph.output]
            meta = {"name": name, "family": "zoo-classic", "exporter": "zoo-reconstruction",
                    "source": f"reconstruction of onnx/models {zpath} (the real file is a Git LFS object, not "
                              "available here): scripts/zoo_classics.py", "inputs": ins, "outputs": outs,
                    "notes": "static batch 1 as the zoo ships it; every initializer is also a graph input"}
            rec = finish(m, name, meta, out_dir, structure_dir, None)
            log[name] = {"status": "ok", "exporter": "zoo-reconstruction", "seconds": round(time.time() - t0, 1), **rec}
            print(f"[ok] {name} ({rec['nodes']} nodes, opset {rec['opset']})", flush=True)
    torch_exporters = [e for e in exporters if e in ("ts", "dynamo")]
    if torch_exporters:
        import torch

        import_torchvision()   # first: transformers / diffusers import torchvision themselves
        torch.manual_seed(SEED)
        for spec in all_specs():
            if wanted and spec.name not in wanted:
                continue
            try:
                torch.manual_seed(SEED)
                module = named_forward(spec.make(), [i.name for i in spec.inputs]).eval()
                perturb_norms(module)
                sample = sample_inputs(spec)
                with torch.no_grad():
                    ref = module(*sample)
            except Exception as e:  # noqa: BLE001 - e.g. diffusers missing
                for ex in torch_exporters:
                    log[f"{spec.name}-{ex}"] = {"status": "skipped", "exporter": ex,
                                                "error": f"model construction failed: {type(e).__name__}: {e}"}
                print(f"[skip] {spec.name}: {type(e).__name__}: {e}", flush=True)
                continue
            for ex in torch_exporters:
                name = f"{spec.name}-{ex}"
                path = out_dir / f"{name}.onnx"
                t0 = time.time()
                try:
                    info = export_one(spec, module, sample, ex, path)
                    m = onnx.load(str(path))
                    ins, outs = describe_inputs(m, spec)
                    meta = {"name": name, "family": spec.family, "exporter": "torch.onnx.export(dynamo=%s)" % (ex == "dynamo"),
                            "torch": torch.__version__, "source": spec.source, "inputs": ins, "outputs": outs,
                            "export": info, "notes": spec.notes}
                    meta["dynamic_kept"] = {i["name"]: [d for d in i["shape"] if not isinstance(d, int)] for i in ins}
                    rec = finish(m, name, meta, out_dir, structure_dir, path)
                    log[name] = {"status": "ok", "exporter": ex, "seconds": round(time.time() - t0, 1), **rec,
                                 "export": info, "inputs": [[i["name"], i["dtype"], i["shape"]] for i in ins]}
                    print(f"[ok] {name} ({rec['nodes']} nodes, opset {rec['opset']}, {time.time() - t0:.0f}s, "
                          f"inputs {[(i['name'], i['shape']) for i in ins]})", flush=True)
                except Exception as e:  # noqa: BLE001 - an exporter failure is a result
                    tb = traceback.format_exc()
                    log[name] = {"status": "failed", "exporter": ex, "seconds": round(time.time() - t0, 1),
                                 "error": f"{type(e).__name__}: {str(e)[:2000]}", "traceback_tail": tb[-3000:]}
                    print(f"[FAILED] {name}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                          flush=True)
                    if structure_dir is not None and (structure_dir / f"{name}.onnx").exists():
                        (structure_dir / f"{name}.onnx").unlink()
                log_path.write_text(json.dumps(log, indent=1, sort_keys=True))
            del module, ref
            gc.collect()
    log_path.write_text(json.dumps(log, indent=1, sort_keys=True))
    if structure_dir is not None:
        summary = {k: {kk: v.get(kk) for kk in ("status", "exporter", "opset", "nodes", "seconds", "error", "export")
                       if v.get(kk) is not None} for k, v in sorted(log.items())}
        for v in summary.values():
            if "error" in v:
                v["error"] = v["error"][:600]
        (structure_dir / "exports.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", nargs="?", help="folder for the full ONNX files (outside the repository)")
    ap.add_argument("--models", help="comma-separated subset (default: all)")
    ap.add_argument("--exporters", default="zoo,ts,dynamo", help="any of zoo,ts,dynamo (default: all three)")
    ap.add_argument("--structure-dir", default=str(ROOT / "tests" / "models"),
                    help="where the structure-only copies go ('' for none)")
    ap.add_argument("--list", action="store_true", help="list the coverage set and exit")
    ap.add_argument("--restrip", action="store_true",
                    help="only re-create the structure copies from the full files in out_dir (after changing "
                         "model_corpus.STRIP_THRESHOLD), keeping their metadata")
    args = ap.parse_args(argv)
    if args.list:
        import zoo_classics
        for s in all_specs():
            print(f"{s.name:22s} {s.family:22s} {s.source}")
        for n, (_, op, p) in zoo_classics.ZOO.items():
            print(f"{n:22s} {'zoo-classic':22s} opset {op} reconstruction of {p}")
        return 0
    if not args.out_dir:
        ap.error("out_dir is required")
    if args.restrip:
        return restrip(Path(args.out_dir), Path(args.structure_dir))
    return run(args)


def restrip(out_dir: Path, structure_dir: Path) -> int:
    import onnx

    import model_corpus as mc

    for p in sorted(structure_dir.glob("*.onnx")):
        meta = mc.info(p.stem, structure_dir)
        for k in ("stripped", "format", "strip_threshold"):
            meta.pop(k, None)
        m = onnx.load(str(out_dir / p.name))
        onnx.save_model(strip_model(m, meta), str(p))
        print(f"{p.name}: {p.stat().st_size} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
