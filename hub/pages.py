"""Operator page: nodes, counters, incidents of the event stream, latest events.

Rendered on the server first (usable without JavaScript, testable with the Flask test
client), then refreshed by hub/static/hub.js polling the JSON API every few seconds.
Without a session (hub/tokens.py) ``/`` shows the sign-in form instead of any data.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, render_template
from flask.typing import ResponseReturnValue

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

LATEST_EVENTS = 20
LATEST_INCIDENTS = 10
REFRESH_SECONDS = 3


@bp.get("/")
def index() -> ResponseReturnValue:
    """The data for a signed-in operator (or a bearer token); the sign-in form else."""
    from hub import get_db
    from hub.api import INCIDENT_KINDS, incident_totals
    from hub.tokens import SignOutForm, current_credential, sign_in_page

    record, _ = current_credential()
    if record is None:
        return sign_in_page()
    db = get_db()
    stale_after = current_app.config["TAPCAST"].hub.stale_after
    events, _ = db.list_events(limit=LATEST_EVENTS)
    incidents = incident_totals(db)
    return render_template("index.html", nodes=db.list_nodes(stale_after=stale_after),
                           totals=db.event_totals(), events=events, now=time.time(),
                           incidents=db.list_incidents(limit=LATEST_INCIDENTS),
                           incident_totals=incidents, incident_kinds=INCIDENT_KINDS,
                           incident_count=sum(n for k, n in incidents.items()
                                              if k != "quarantined_batches"),
                           refresh_ms=REFRESH_SECONDS * 1000, latest=LATEST_EVENTS,
                           latest_incidents=LATEST_INCIDENTS,
                           signed_in_as=record.name, signout_form=SignOutForm())


@bp.app_template_filter("clock")
def clock(ts: float | None) -> str:
    """Unix seconds as UTC hh:mm:ss (the JS shows the same format)."""
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
