"""Operator page: nodes, counters, incidents of the event stream, latest events.

Rendered on the server first (usable without JavaScript, testable with the Flask test
client), then refreshed by hub/static/hub.js polling the JSON API every few seconds.
Nothing on it grows with the fleet: the nodes table is one page (filters by zone,
version and status in the address, a link to the next page), the counts come from
maintained totals, and each refresh is a conditional request (ETag) that moves no body
when nothing changed.
Without a session ``/`` shows the sign-in form instead of any data (hub/auth.py); a
role without the permissions below sees what it may do instead.
"""
from __future__ import annotations

import logging
import time

from flask import Blueprint, current_app, render_template, request
from flask.typing import ResponseReturnValue

from hub.auth import current_principal, signed_in
from hub.db import NODE_STATUSES, QueryError

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

LATEST_EVENTS = 20
LATEST_INCIDENTS = 10
NODES_PER_PAGE = 50
REFRESH_SECONDS = 3
#: What the operator page shows needs all of these (hub/accounts.py ROLE_PERMISSIONS).
OPERATOR_PAGE = frozenset({"nodes:read", "events:read", "incidents:read", "stats:read"})


@bp.get("/")
@signed_in
def index() -> ResponseReturnValue:
    """The fleet for a role that may read it; for other roles, what the role may do.
    (Without a session the access gate shows the sign-in form here.)"""
    from hub import get_db
    from hub.accounts_pages import home_page
    from hub.api import INCIDENT_KINDS, incident_totals

    if not OPERATOR_PAGE <= current_principal().permissions:
        return home_page()
    db = get_db()
    stale_after = current_app.config["TAPCAST"].hub.stale_after
    events, _ = db.list_events(limit=LATEST_EVENTS)
    incidents = incident_totals(db)
    filters = node_filters()
    try:
        nodes, next_cursor = db.list_nodes(stale_after=stale_after, limit=NODES_PER_PAGE,
                                           cursor=request.args.get("cursor") or None, **filters)
    except QueryError:  # a hand-edited address: show the first page of everything
        filters = {}
        nodes, next_cursor = db.list_nodes(stale_after=stale_after, limit=NODES_PER_PAGE)
    return render_template("index.html", nodes=nodes, next_cursor=next_cursor,
                           filters=filters, statuses=NODE_STATUSES,
                           node_totals=db.node_totals(stale_after=stale_after),
                           nodes_per_page=NODES_PER_PAGE,
                           totals=db.event_totals(), events=events, now=time.time(),
                           incidents=db.list_incidents(limit=LATEST_INCIDENTS),
                           incident_totals=incidents, incident_kinds=INCIDENT_KINDS,
                           incident_count=sum(n for k, n in incidents.items()
                                              if k != "quarantined_batches"),
                           refresh_ms=REFRESH_SECONDS * 1000, latest=LATEST_EVENTS,
                           latest_incidents=LATEST_INCIDENTS)


def node_filters() -> dict[str, str]:
    """The nodes table's filters from the page address (zone, version, status); blank
    fields are no filter, and anything the API would refuse is dropped."""
    out = {}
    for name in ("zone", "version", "status"):
        value = (request.args.get(name) or "").strip()
        if value and len(value) <= 64 and value.isprintable():
            out[name] = value
    if out.get("status") not in (None, *NODE_STATUSES):
        del out["status"]
    return out


@bp.app_template_filter("clock")
def clock(ts: float | None) -> str:
    """Unix seconds as UTC hh:mm:ss (the JS shows the same format)."""
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
