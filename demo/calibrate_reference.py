"""The reference model's MagCache calibration, as shipped in demo/models/: MagCacheCalibrate on one
20-step run (euler / simple, CFG 4) of the benchmark's calibration prompt and seed ("a white ring",
seed 999; bench/quality.py). The reference workflow carries its ratio curve in a MagCache Ratios node,
so that it runs on its first Run, before the user has calibrated anything.

    python demo/calibrate_reference.py [--out demo/models/magcache_shapes_wan.calibration.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bench"))
sys.path.insert(0, str(HERE))

OUT = HERE / "models" / "magcache_shapes_wan.calibration.json"
NAME, STEPS = "shapes_demo", 20


def calibrate(steps: int = STEPS, name: str = NAME) -> dict:
    """Calibrates the reference model in this process (ComfyUI set up by bench/quality.setup_comfy)
    and returns the calibration document the pack saved."""
    import quality
    if "comfyui_magcache" not in sys.modules:
        quality.setup_comfy(tempfile.mkdtemp(prefix="magcache-calibrate-"))
    from comfyui_magcache.nodes.magcache_nodes import MagCacheCalibrate, calibration_store
    from comfyui_magcache_demo import reference

    model = reference.load()
    calibrating = MagCacheCalibrate().calibrate(model, name)[0]
    reference.sample(calibrating, quality.CALIBRATION_PROMPT, quality.CALIBRATION_SEED, steps, quality.CFG,
                     quality.SAMPLER, quality.SCHEDULER)
    return calibration_store().load(name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    doc = calibrate()
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}: {doc['steps']} steps, curves {sorted(doc['mag_ratios'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
