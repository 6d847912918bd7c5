"""comfyui_magcache_demo: test and demo helpers for comfyui-magcache. Never shipped with the pack.

Install it (next to the pack) only in a test or demo ComfyUI: it adds a stand-in text encoder node,
and ``tiny_wan.py`` builds a small Wan 2.1 T2V checkpoint that ComfyUI's stock loader accepts.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
