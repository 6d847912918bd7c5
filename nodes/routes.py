"""The pack's HTTP routes (only inside a ComfyUI server): the saved calibrations, read-only.

    GET /magcache/calibrations         {"calibrations": [{name, model, steps, created, teacache}...],
                                        "presets": {"MagCacheApply": [...], "TeaCacheApply": [...]}}
    GET /magcache/calibrations/{name}  the calibration document, as saved and validated

(ComfyUI also serves each under /api.) Every request is checked before anything is read: no body
(413 over ``MAX_BODY``), a valid calibration name (``storage.check_name``: 400), a file directly in
the calibration folder once links are resolved (404 otherwise, as for a name not saved), at most
``MAX_FILE_BYTES`` (413), and a valid calibration document (422). Nothing is ever written here: the
only writer is MagCacheCalibrate, through ``CalibrationStore.save``.
"""
from __future__ import annotations

import logging
import os

from ..magcache_core import MagCacheInputError
from ..magcache_core.storage import check_name

log = logging.getLogger("comfyui-magcache")

PREFIX = "/magcache/calibrations"
MAX_BODY = 0                       # these routes take no body
MAX_FILE_BYTES = 8 * 1024 * 1024   # a 1000-step, two-cond calibration is about 0.3 MB


def _store():
    from .magcache_nodes import calibration_store
    return calibration_store()


def _error(status: int, message: str):
    from aiohttp import web
    return web.json_response({"error": message}, status=status)


def _inside(store, path: str) -> bool:
    """``path`` is a regular file directly in the store's folder, with every link resolved."""
    real = os.path.realpath(path)
    return os.path.dirname(real) == os.path.realpath(store.folder) and os.path.isfile(real)


def _too_big(request) -> bool:
    length = request.content_length
    return (length is not None and length > MAX_BODY) or (length is None and request.body_exists)


def read_calibration(store, name) -> tuple[int, dict]:
    """(HTTP status, JSON answer) for calibration ``name`` of ``store``; no request needed (tested directly)."""
    try:
        name = check_name(name, "name")
        path = store.path(name, "name")
    except MagCacheInputError as e:
        return 400, {"error": str(e)}
    if not _inside(store, path):
        return 404, {"error": f"no calibration named {name!r}"}
    size = os.path.getsize(os.path.realpath(path))
    if size > MAX_FILE_BYTES:
        return 413, {"error": f"calibration {name!r} is {size} bytes, over the {MAX_FILE_BYTES} this route returns"}
    try:
        doc = store.load(name, "name")
    except MagCacheInputError as e:
        return 422, {"error": str(e).replace(store.folder + os.sep, "")}   # the file's name, not the server's paths
    return 200, doc


def list_calibrations(store) -> list[dict]:
    """One entry per saved calibration: its metadata, or why it cannot be used."""
    out = []
    for name in store.names():
        status, doc = read_calibration(store, name)
        if status == 200:
            out.append({"name": name, "model": doc["model"], "steps": doc["steps"], "created": doc.get("created"),
                        "conds": sorted(doc["mag_ratios"]), "teacache": isinstance(doc.get("teacache"), dict)})
        else:
            out.append({"name": name, "error": doc["error"]})
    return out


async def get_list(request):
    from aiohttp import web
    from .report import preset_lists
    if _too_big(request):
        return _error(413, "this route takes no request body")
    return web.json_response({"calibrations": list_calibrations(_store()), "presets": preset_lists()})


async def get_one(request):
    from aiohttp import web
    if _too_big(request):
        return _error(413, "this route takes no request body")
    status, answer = read_calibration(_store(), request.match_info.get("name", ""))
    return web.json_response(answer, status=status)


def add_routes(routes) -> None:
    """Adds the routes to an aiohttp RouteTableDef (ComfyUI's ``PromptServer.instance.routes``)."""
    routes.get(PREFIX)(get_list)
    routes.get(PREFIX + "/{name}")(get_one)


def register() -> bool:
    """Adds the routes to ComfyUI's server when there is one (not in plain Python or tests)."""
    from .report import prompt_server
    server = prompt_server()
    routes = getattr(server, "routes", None)
    if routes is None:
        return False
    add_routes(routes)
    return True
