// comfyui-magcache front-end extension: a placeholder, no behaviour yet.
// ComfyUI serves this folder (WEB_DIRECTORY in __init__.py) at /extensions/comfyui-magcache/.
import { app } from "../../scripts/app.js";

app.registerExtension({
    name: "comfyui-magcache",
});
