"""comfyui_magcache_demo: test and demo helpers for comfyui-magcache. Never shipped with the pack.

Install it (next to the pack) only in a test or demo ComfyUI. It adds the reference model's prompt
and decode nodes (``shapes.py``, ``reference.py``; the weights are in ``demo/models/``) and a stand-in
text encoder node; ``tiny_wan.py`` builds a small random Wan 2.1 T2V checkpoint for the tests.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
