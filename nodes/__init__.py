from . import magcache_nodes, teacache_nodes

NODE_CLASS_MAPPINGS = {**magcache_nodes.NODE_CLASS_MAPPINGS, **teacache_nodes.NODE_CLASS_MAPPINGS}
NODE_DISPLAY_NAME_MAPPINGS = {**magcache_nodes.NODE_DISPLAY_NAME_MAPPINGS, **teacache_nodes.NODE_DISPLAY_NAME_MAPPINGS}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
