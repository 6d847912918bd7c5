"""Mochi: ``comfy.ldm.genmo.joint_model.asymm_models_joint.AsymmDiTJoint``.

Residual: video tokens before the first block -> after the last. Calibrate first.
"""
from __future__ import annotations

from .base import BlockStrategy


class MochiStrategy(BlockStrategy):
    name = "mochi"
    title = "Mochi"
    residual = "video tokens before the first block -> after the last"
    model_classes = ("comfy.ldm.genmo.joint_model.asymm_models_joint.AsymmDiTJoint",)
    double_blocks = "blocks"
