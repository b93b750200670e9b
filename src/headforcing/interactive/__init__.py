"""Interactive mode: a local web page shows the video as it is generated and takes new prompts.

:mod:`.session` runs the generator in a worker thread and writes the growing video;
:mod:`.server` serves the page and its small JSON/PNG API with the standard library.
"""

from headforcing.interactive.server import LiveServer, serve
from headforcing.interactive.session import LivePrompt, LiveSession

__all__ = ["LivePrompt", "LiveServer", "LiveSession", "serve"]
