"""comfyui-magcache: MagCache and TeaCache for diffusion models in ComfyUI, through model_patcher wrappers.

Outside ComfyUI the same package serves diffusers users (``diffusers_api``); the nodes, which need ComfyUI,
load only inside it. ComfyUI imports its own ``folder_paths`` and ``comfy`` before it loads any custom node,
so their presence says the pack is being loaded by ComfyUI (or by a script that already runs ComfyUI's code).
"""
import sys

__all__ = []

if "folder_paths" in sys.modules and "comfy" in sys.modules:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    # ComfyUI serves this folder at /extensions/<pack folder>/ and loads every .js file in it (web/js/); the node
    # info panel reads web/docs/<Node>.md (or <Node>/<locale>.md) from there.
    WEB_DIRECTORY = "./web"

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
