from . import magcache_nodes, routes, teacache_nodes

NODE_CLASS_MAPPINGS = {**magcache_nodes.NODE_CLASS_MAPPINGS, **teacache_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**magcache_nodes.NODE_DISPLAY_NAME_MAPPINGS, **teacache_nodes.NODE_DISPLAY_NAME_MAPPINGS}

routes.register()            # the calibration routes, inside a ComfyUI server only

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
