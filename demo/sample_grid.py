"""The model card's sample grid: every colour x shape prompt of the reference model, sampled in ComfyUI
(comfy.sample.sample, euler / simple, 20 steps, CFG 4, seed = row index), plus one row of the
training data for comparison.

    python demo/sample_grid.py [--out demo/models/samples.png]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))
sys.path.insert(0, str(HERE))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "models" / "samples.png")
    ap.add_argument("--zoom", type=int, default=3)
    args = ap.parse_args(argv)
    import quality
    quality.setup_comfy(tempfile.mkdtemp(prefix="magcache-grid-"))
    from comfyui_magcache_demo import reference, shapes

    model = reference.load()
    colors, forms = list(shapes.COLORS), list(shapes.SHAPES)
    z, pad, left, top = 32 * args.zoom, 4, 70, 16
    img = Image.new("RGB", (left + len(colors) * (z + pad), top + (len(forms) + 1) * (z + pad) + 12), (20, 20, 20))
    draw = ImageDraw.Draw(img)
    for c, color in enumerate(colors):
        draw.text((left + c * (z + pad), 2), color, fill=(220, 220, 220))

    def paste(tile: torch.Tensor, r: int, c: int, y0: int = 0):
        a = (tile.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        img.paste(Image.fromarray(a).resize((z, z), Image.NEAREST), (left + c * (z + pad), top + y0 + r * (z + pad)))

    for r, form in enumerate(forms):
        draw.text((4, top + r * (z + pad) + z // 2 - 6), form, fill=(220, 220, 220))
        for c, color in enumerate(colors):
            paste(reference.decode(reference.sample(model, f"a {color} {form}", seed=r, steps=20, cfg=4.0))[0], r, c)
    g = torch.Generator().manual_seed(7)
    data = shapes.render(torch.arange(len(colors)), torch.arange(len(colors)) % len(forms), g)
    y0 = 12
    draw.text((4, top + len(forms) * (z + pad) + y0 + z // 2 - 6), "training\ndata", fill=(160, 160, 160))
    for c in range(len(colors)):
        paste(data[c].movedim(0, -1), len(forms), c, y0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
