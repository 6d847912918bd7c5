"""comfyui-magcache: MagCache and TeaCache for diffusion models in ComfyUI, through model_patcher wrappers."""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# ComfyUI serves this folder at /extensions/<pack folder>/ and loads every .js file in it (web/js/); the node
# info panel reads web/docs/<Node>.md (or <Node>/<locale>.md) from there.
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
