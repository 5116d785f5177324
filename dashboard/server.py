"""The server entry for a team deployment with login: ``streamlit run dashboard/server.py``.

Streamlit's public ``st.App`` (an ASGI app) runs dashboard/app.py unchanged, with
``dashboard.gate.SessionGate`` in front: with login on, media files (``/media/...``),
component files and uploads are served only to a browser holding the pass cookie it gets
when its user signs in (see dashboard/gate.py). Without login the gate lets everything
through, so this entry also serves a single user. ``streamlit run dashboard/app.py`` still
works, without the gate (see README, "Deploying for a team").

Importing this module (once, at server start) also starts ``dashboard.startup``'s preload:
the home page's imports, default model, image and caches load while the server boots and
the browser loads the page (``CONVLENS_PRELOAD=0`` turns it off).
"""
import sys
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))     # the repository root

from dashboard import startup
from dashboard.gate import SessionGate

startup.start()

app = st.App("app.py", middleware=[Middleware(SessionGate)])
