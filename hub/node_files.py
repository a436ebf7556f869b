"""Files for nodes: ``GET /node/v1/files/<sha256>?node=&ts=&sig=``, the file a node's
signed manifest names, with HTTP Range so a download cut halfway resumes where it
stopped (tapcast.protocol.manifest documents the request).

Why not an account and a token: a node already holds a secret the hub can check, its
stream key, and has no account. Each request is signed with it, fresh within
FILE_REQUEST_WINDOW, so a request seen on the wire is no good ten minutes later. A
request that does not verify is refused (403, counted with the hub's other refused
credentials); a file no content version names is a 404, so the hub serves nodes the
library's files and nothing else of its disk.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, Flask, current_app, jsonify, request, send_file
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from tapcast.protocol.manifest import check_file_request
from tapcast.protocol.mqtt import ID_RE, stream_key
from tapcast.streamkeys import StreamKeyError, load_stream_secret

from hub.auth import public, refused
from hub.content_api import library
from hub.files import SHA256_RE
from hub.schema import content_versions

log = logging.getLogger(__name__)

bp = Blueprint("node_files", __name__, url_prefix="/node/v1")

_SECRET = "tapcast.stream_secret"


def _secret(app: Flask) -> bytes | None:
    """The stream secret, read once per process; None (logged) when this hub web has
    none, and then no node can fetch files from it."""
    if _SECRET not in app.extensions:
        try:
            app.extensions[_SECRET] = load_stream_secret(app.config["TAPCAST"].hub.stream_secret)
        except StreamKeyError as exc:
            log.error("nodes cannot fetch content files from this hub web: %s", exc)
            app.extensions[_SECRET] = None
    return app.extensions[_SECRET]


def _error(message: str, status: int) -> ResponseReturnValue:
    return jsonify({"error": message}), status


@bp.get("/files/<sha256>")
@public  # checked here: the request is signed with the node's stream key
def node_file(sha256: str) -> ResponseReturnValue:
    args = request.args
    if set(args) != {"node", "ts", "sig"} or any(len(args.getlist(k)) > 1 for k in args):
        return _error("give node, ts and sig once each (tapcast.protocol.manifest)", 400)
    node_id, ts_text, sig = args["node"], args["ts"], args["sig"]
    if not SHA256_RE.fullmatch(sha256):
        return _error("a file is named by its sha256 in lowercase hex", 404)
    if not ID_RE.fullmatch(node_id) or len(node_id) > 64 or not ts_text.isdigit() \
            or len(ts_text) > 12 or len(sig) != 64:
        refused("a malformed node file request")
        return _error("node, ts (unix seconds) or sig (64 hex digits) is malformed", 403)
    secret = _secret(current_app)
    if secret is None:
        return _error("this hub web has no stream secret ([hub] stream_secret), so it "
                      "cannot check nodes' requests: install it as for hub ingest", 503)
    why = check_file_request(stream_key(secret, node_id), node_id, sha256, int(ts_text),
                             sig, time.time())
    if why is not None:
        refused(f"node file request from {node_id}: {why}")
        return _error(f"refused: {why}", 403)
    lib = library()
    with lib.engine.connect() as conn:
        named = conn.execute(select(content_versions.c.key).where(
            content_versions.c.file_sha256 == sha256).limit(1)).first()
    path = lib.files.path(sha256)
    if named is None or not path.is_file():
        return _error(f"no content file {sha256}", 404)
    return send_file(path.resolve(), mimetype="application/octet-stream", conditional=True,
                     etag=sha256, max_age=0)
