"""Content pages for marketers: the library, a new item with its file, an item's page
(as a customer sees it, its versions, a new version, where and when it runs, retire),
node groups, and the preview of what a node would show at a given time.

Plain forms (Flask-WTF, CSRF-checked by the gate in hub/auth.py) posting back to the
server; every change goes through hub/content.py and is audited with ``via = "web"``.
A form that does not hold is shown again with what is wrong and the 4xx status of the
API's answer; a refused file leaves nothing behind, and every field of a new item is
checked before its file is kept.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, current_app, flash, redirect, render_template, \
    request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from flask_wtf.file import FileField
from wtforms import (BooleanField, IntegerField, SelectField, SelectMultipleField,
                     StringField, TextAreaField, widgets)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange, Optional

from hub.auth import Principal, current_principal, requires
from hub.content import (CONTENT_KINDS, FILE_TYPES, KEY_RE, MAX_BODY, MAX_MERCHANT,
                         MAX_PRICE_CENTS,
                         MAX_TITLE, ContentError, ItemInput, Targets, check_text,
                         check_timezone, checked_file_name, parse_schedule)
from hub.content_api import library, path_key

log = logging.getLogger(__name__)

bp = Blueprint("content_pages", __name__)

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _names(text: str | None) -> tuple[str, ...]:
    """Zones, groups or nodes typed as a list separated by commas or spaces."""
    return tuple(n for n in (text or "").replace(",", " ").split() if n)


class PlacementFields(FlaskForm):
    """Where and when (shared by the new item form and the item's placement form)."""

    everywhere = BooleanField("Every node")
    zones = StringField("Zones", validators=[Optional(), Length(max=4000)])
    groups = StringField("Node groups", validators=[Optional(), Length(max=4000)])
    nodes = StringField("Single nodes", validators=[Optional(), Length(max=4000)])
    starts = StringField("From (date)", validators=[Optional(), Length(max=10)])
    ends = StringField("Until (date)", validators=[Optional(), Length(max=10)])
    days = SelectMultipleField("Days", choices=[SelectChoice(str(i), d)
                                                for i, d in enumerate(DAYS)],
                               widget=widgets.ListWidget(prefix_label=False),
                               option_widget=widgets.CheckboxInput())
    windows = StringField("Time windows", validators=[Optional(), Length(max=400)])
    priority = IntegerField("Priority", default=0,
                            validators=[Optional(), NumberRange(min=-100, max=100)])
    share = IntegerField("Share of the loop", default=1,
                         validators=[Optional(), NumberRange(min=1, max=100)])
    cap_count = IntegerField("At most", validators=[Optional(),
                                                    NumberRange(min=1, max=1000)])
    cap_per = SelectField("per handset per", choices=["day", "week"])

    def targets(self) -> Targets:
        return Targets(bool(self.everywhere.data), _names(self.zones.data),
                       _names(self.groups.data), _names(self.nodes.data))

    def schedule(self) -> Any:
        windows = []
        for part in (self.windows.data or "").replace(";", ",").split(","):
            part = part.strip()
            if not part:
                continue
            start, sep, end = part.partition("-")
            if not sep:
                raise ContentError(f"time window {part[:40]!r}: write it as HH:MM-HH:MM, "
                                   "such as 22:00-02:00")
            windows.append({"start": start.strip(), "end": end.strip()})
        data: dict[str, Any] = {
            "starts": self.starts.data or None, "ends": self.ends.data or None,
            "days": sorted(int(d) for d in self.days.data or []), "windows": windows,
            "priority": self.priority.data or 0,
            "share": self.share.data if self.share.data is not None else 1}
        if self.cap_count.data:
            data["cap"] = {"count": self.cap_count.data, "per": self.cap_per.data}
        return parse_schedule(data)

    def fill(self, item: dict[str, Any]) -> None:
        t, s = item["targets"], item["schedule"]
        self.everywhere.data = t["everywhere"]
        self.zones.data, self.groups.data, self.nodes.data = (
            ", ".join(t[k]) for k in ("zones", "groups", "nodes"))
        self.starts.data, self.ends.data = s.get("starts") or "", s.get("ends") or ""
        self.days.data = [str(d) for d in s.get("days", [])]
        self.windows.data = ", ".join(f"{w['start']}-{w['end']}" for w in s.get("windows", []))
        self.priority.data, self.share.data = s.get("priority", 0), s.get("share", 1)
        cap = s.get("cap")
        self.cap_count.data = cap["count"] if cap else None
        self.cap_per.data = cap["per"] if cap else "day"


class NewItemForm(PlacementFields):
    key = StringField("Key", validators=[InputRequired(), Length(max=64)])
    kind = SelectField("Kind", choices=list(CONTENT_KINDS))
    title = StringField("Title", validators=[InputRequired(), Length(max=MAX_TITLE)])
    body = TextAreaField("Text", validators=[Optional(), Length(max=MAX_BODY)])
    price_cents = IntegerField("Price (cents)", default=0, validators=[
        Optional(), NumberRange(min=0, max=MAX_PRICE_CENTS)])
    merchant = StringField("Merchant", validators=[Optional(), Length(max=MAX_MERCHANT)])
    file = FileField("File")


class VersionForm(FlaskForm):
    title = StringField("Title", validators=[InputRequired(), Length(max=MAX_TITLE)])
    body = TextAreaField("Text", validators=[Optional(), Length(max=MAX_BODY)])
    price_cents = IntegerField("Price (cents)", validators=[
        Optional(), NumberRange(min=0, max=MAX_PRICE_CENTS)])
    merchant = StringField("Merchant", validators=[Optional(), Length(max=MAX_MERCHANT)])
    file = FileField("Replace the file")
    drop_file = BooleanField("No file in the new version")


class GroupForm(FlaskForm):
    name = StringField("Group", validators=[InputRequired(), Length(max=64)])
    nodes = StringField("Nodes", validators=[Optional(), Length(max=200_000)])


class PreviewForm(FlaskForm):
    class Meta:
        csrf = False  # a GET that changes nothing

    node_id = StringField("Node", validators=[InputRequired(), Length(max=64)])
    at = StringField("At (local time)", validators=[Optional(), Length(max=16)])
    tz = StringField("Time zone", validators=[Optional(), Length(max=64)])


class ActionForm(FlaskForm):
    """Only the CSRF token: a button that changes something."""


def _actor() -> Any:
    principal = current_principal()
    assert isinstance(principal, Principal)
    return principal.actor()


def _page(template: str, status: int = 200, **context: Any) -> Response:
    response = Response(render_template(template, file_types=FILE_TYPES, days=DAYS,
                                        **context), status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def _form_errors(form: FlaskForm) -> str:
    return "; ".join(f"{getattr(form, k).label.text}: {', '.join(map(str, v))}"
                     for k, v in form.errors.items())


def _library_page(form: NewItemForm | None = None, error: str = "", status: int = 200,
                  preview: dict[str, Any] | None = None,
                  preview_form: PreviewForm | None = None,
                  group_form: GroupForm | None = None) -> Response:
    lib = library()
    kind = request.args.get("kind")
    items = lib.list(kind=kind if kind in CONTENT_KINDS else None, limit=500)
    return _page("content.html", status, items=items, form=form or NewItemForm(),
                 error=error, groups=lib.groups(), group_form=group_form or GroupForm(),
                 preview=preview, preview_form=preview_form or PreviewForm(formdata=None),
                 kind=kind, timezone=current_app.config["TAPCAST"].hub.timezone)


@bp.get("/content")
@requires("content:read")
def content() -> ResponseReturnValue:
    """The library; with ``node_id`` (and ``at``, ``tz``), the preview of that node."""
    preview = None
    preview_form = PreviewForm(request.args) if "node_id" in request.args else None
    if preview_form is not None:
        if not preview_form.validate():
            return _library_page(error=_form_errors(preview_form), status=400,
                                 preview_form=preview_form)
        try:
            node_id = path_key(preview_form.node_id.data.strip(), "node")
            tz = check_timezone(preview_form.tz.data or library().node_timezone(
                node_id,
                current_app.config["TAPCAST"].hub.timezone))
            at = time.time()
            if preview_form.at.data:
                try:
                    local = datetime.fromisoformat(preview_form.at.data)
                except ValueError:
                    raise ContentError("At: a local date and time such as "
                                       "2026-12-24T18:30") from None
                at = local.replace(tzinfo=ZoneInfo(tz)).timestamp()
            preview = library().preview(node_id, at, tz)
        except ContentError as exc:
            return _library_page(error=str(exc), status=exc.status,
                                 preview_form=preview_form)
    return _library_page(preview=preview, preview_form=preview_form)


@bp.post("/content")
@requires("content:write")
def create_content() -> ResponseReturnValue:
    form = NewItemForm()
    if not form.validate_on_submit():
        return _library_page(form, _form_errors(form), 400)
    lib = library()
    key, kind = form.key.data.strip(), form.kind.data
    try:
        # Everything but the file first: a form that fails keeps no file.
        if not KEY_RE.fullmatch(key):
            raise ContentError(f"Key {path_key(key)!r}: use letters, digits, '-' and '_' "
                               "(1 to 64)")
        targets, schedule = form.targets().checked(), form.schedule()
        try:
            lib.get(key)
            raise ContentError(f"an item {key!r} exists already: open it to make a new "
                               "version, or pick another key", 409)
        except ContentError as exc:
            if exc.status != 404:
                raise
        text = (form.title.data, form.body.data or "", form.price_cents.data or 0)
        check_text(*text)
        file, name = _upload(form.file.data, kind)
        item = lib.create(_actor(), key, kind, ItemInput(*text, file, name,
                                                         merchant=form.merchant.data or ""),
                          targets=targets, schedule=schedule)
    except ContentError as exc:
        return _library_page(form, str(exc), exc.status)
    flash(f"{item['key']} published (version 1)", "ok")
    return redirect(url_for("content_pages.item", key=key), 303)


def _upload(upload: Any, kind: str) -> tuple[Any, str | None]:
    """The form's file, kept (the last step of a form: every other field is checked
    first, so a form that fails keeps no file); (None, None) when none was chosen."""
    if upload is None or not upload.filename:
        return None, None
    name = checked_file_name(upload.filename)
    return library().store_file(upload.stream, kind, name=name), name


@bp.post("/content/groups")
@requires("content:write")
def set_group() -> ResponseReturnValue:
    form = GroupForm()
    if not form.validate_on_submit():
        return _library_page(error=_form_errors(form), status=400, group_form=form)
    try:
        group = library().set_group(_actor(), form.name.data.strip(), _names(form.nodes.data))
    except ContentError as exc:
        return _library_page(error=str(exc), status=exc.status, group_form=form)
    flash(f"group {group['name']}: {len(group['nodes'])} nodes", "ok")
    return redirect(url_for("content_pages.content"), 303)


# ------------------------------------------------------------------ one item


def _funnel(key: str) -> dict[str, Any]:
    from hub import get_db
    from hub.content_api import funnel_range

    since, until = funnel_range(request.args)
    return get_db().funnel(key, since, until)


def _charts(funnel: dict[str, Any]) -> dict[str, str]:
    """The funnel as two SVG charts (pygal; rendered here, no script from elsewhere)."""
    import pygal

    common = {"js": [], "disable_xml_declaration": True, "height": 320, "width": 860,
              "legend_at_bottom": True, "show_minor_x_labels": False}
    by_day = pygal.Line(title="Per day (UTC)", x_label_rotation=30,
                        x_labels_major_every=7, **common)
    by_day.x_labels = [d["day"] for d in funnel["by_day"]]
    for stage in funnel["stages"]:
        by_day.add(stage, [d[stage] for d in funnel["by_day"]])
    by_node = pygal.HorizontalBar(title="The nodes that delivered it most", **common)
    by_node.x_labels = [n["node_id"] for n in funnel["by_node"]]
    for stage in funnel["stages"]:
        if stage != "tap":
            by_node.add(stage, [n[stage] for n in funnel["by_node"]])
    return {"by_day": by_day.render(is_unicode=True),
            "by_node": by_node.render(is_unicode=True) if funnel["by_node"] else ""}


def _item_page(key: str, *, version_form: VersionForm | None = None,
               placement_form: PlacementFields | None = None, error: str = "",
               status: int = 200) -> Response:
    lib = library()
    item = lib.get(path_key(key))
    if version_form is None:
        cur = item["version"]
        version_form = VersionForm(formdata=None, title=cur["title"], body=cur["body"],
                                   price_cents=cur["price_cents"],
                                   merchant=cur["merchant"])
    if placement_form is None:
        placement_form = PlacementFields(formdata=None)
        placement_form.fill(item)
    try:
        funnel = _funnel(item["key"])
    except ContentError as exc:
        funnel, error = _funnel_default(item["key"]), error or str(exc)
        status = 400 if status == 200 else status
    return _page("content_item.html", status, item=item, versions=lib.versions(item["key"]),
                 version_form=version_form, placement_form=placement_form,
                 action_form=ActionForm(), error=error, funnel=funnel,
                 charts=_charts(funnel))


def _funnel_default(key: str) -> dict[str, Any]:
    from hub import get_db

    today = int(time.time() // 86400)
    return get_db().funnel(key, today - 29, today)


@bp.get("/content/<key>")
@requires("content:read")
def item(key: str) -> ResponseReturnValue:
    try:
        return _item_page(key)
    except ContentError as exc:
        return _library_page(error=str(exc), status=exc.status)


@bp.post("/content/<key>/versions")
@requires("content:write")
def create_version(key: str) -> ResponseReturnValue:
    form = VersionForm()
    try:
        if not form.validate_on_submit():
            return _item_page(key, version_form=form, error=_form_errors(form), status=400)
        lib = library()
        current = lib.get(path_key(key))
        if current["retired_at"] is not None:
            raise ContentError(f"{key!r} is retired; make a new item instead", 409)
        price = (form.price_cents.data if form.price_cents.data is not None
                 else current["version"]["price_cents"])
        check_text(form.title.data, form.body.data or "", price)
        file, name = _upload(form.file.data, current["kind"])
        done = lib.revise(_actor(), key, ItemInput(
            form.title.data, form.body.data or "", price, file, name,
            drop_file=bool(form.drop_file.data), merchant=form.merchant.data or ""))
    except ContentError as exc:
        if exc.status == 404:
            return _library_page(error=str(exc), status=404)
        return _item_page(key, version_form=form, error=str(exc), status=exc.status)
    flash(f"{key}: version {done['current']} published", "ok")
    return redirect(url_for("content_pages.item", key=key), 303)


@bp.post("/content/<key>/placement")
@requires("content:write")
def place(key: str) -> ResponseReturnValue:
    form = PlacementFields()
    try:
        if not form.validate_on_submit():
            return _item_page(key, placement_form=form, error=_form_errors(form), status=400)
        library().place(_actor(), path_key(key), targets=form.targets(), schedule=form.schedule())
    except ContentError as exc:
        if exc.status == 404:
            return _library_page(error=str(exc), status=404)
        return _item_page(key, placement_form=form, error=str(exc), status=exc.status)
    flash(f"{key}: where and when saved", "ok")
    return redirect(url_for("content_pages.item", key=key), 303)


@bp.post("/content/<key>/retire")
@requires("content:write")
def retire(key: str) -> ResponseReturnValue:
    try:
        library().retire(_actor(), path_key(key))
    except ContentError as exc:
        flash(str(exc), "error")
        return redirect(url_for("content_pages.content"), 303)
    flash(f"{key} retired: no node gets it any more", "ok")
    return redirect(url_for("content_pages.item", key=key), 303)


@bp.get("/content/<key>/funnel.csv")
@requires("content:read")
def funnel_csv(key: str) -> ResponseReturnValue:
    """An item's funnel as CSV (``by=day``, the default, or ``by=node``)."""
    try:
        library().get(path_key(key))
    except ContentError as exc:
        return Response(f"{exc}\n", status=exc.status, mimetype="text/plain")
    return _funnel_csv([key], key)


@bp.get("/campaigns/<key>/funnel.csv")
@requires("content:read")
def campaign_funnel_csv(key: str) -> ResponseReturnValue:
    """A campaign's funnel (its items together) as CSV."""
    try:
        campaign = library().get_campaign(path_key(key, "campaign"))
    except ContentError as exc:
        return Response(f"{exc}\n", status=exc.status, mimetype="text/plain")
    return _funnel_csv(campaign["items"], f"campaign-{key}")


def _funnel_csv(keys: list[str], name: str) -> Response:
    import csv
    import io

    from hub import get_db
    from hub.content_api import funnel_range

    try:
        since, until = funnel_range(request.args)
    except ContentError as exc:
        return Response(f"{exc}\n", status=exc.status, mimetype="text/plain")
    funnel = get_db().funnel(keys, since, until)
    by = request.args.get("by", "day")
    if by not in ("day", "node"):
        return Response("by must be day or node\n", status=400, mimetype="text/plain")
    rows = funnel["by_day"] if by == "day" else funnel["by_node"]
    out = io.StringIO()
    writer = csv.writer(out)
    first = "day" if by == "day" else "node_id"
    writer.writerow([first, *funnel["stages"]])
    for row in rows:
        writer.writerow([row[first], *(row[s] for s in funnel["stages"])])
    response = Response(out.getvalue(), mimetype="text/csv")
    response.headers["Content-Disposition"] = \
        f'attachment; filename="{name}-funnel-by-{by}.csv"'
    return response


# ------------------------------------------------------------------ campaigns


class CampaignForm(PlacementFields):
    key = StringField("Key", validators=[InputRequired(), Length(max=64)])
    title = StringField("Title", validators=[InputRequired(), Length(max=MAX_TITLE)])
    items = StringField("Items", validators=[Optional(), Length(max=40_000)])


class CampaignItemsForm(FlaskForm):
    items = StringField("Items", validators=[Optional(), Length(max=40_000)])


def _campaigns_page(form: CampaignForm | None = None, error: str = "",
                    status: int = 200) -> Response:
    return _page("campaigns.html", status, campaigns=library().list_campaigns(),
                 form=form or CampaignForm(formdata=None), error=error)


@bp.get("/campaigns")
@requires("content:read")
def campaigns() -> ResponseReturnValue:
    return _campaigns_page()


@bp.post("/campaigns")
@requires("content:write")
def create_campaign() -> ResponseReturnValue:
    form = CampaignForm()
    if not form.validate_on_submit():
        return _campaigns_page(form, _form_errors(form), 400)
    key = form.key.data.strip()
    try:
        targets, schedule = form.targets().checked(), form.schedule()
        library().create_campaign(_actor(), key, form.title.data, targets=targets,
                                  schedule=schedule, items=_names(form.items.data))
    except ContentError as exc:
        return _campaigns_page(form, str(exc), exc.status)
    flash(f"campaign {key} created", "ok")
    return redirect(url_for("content_pages.campaign", key=key), 303)


def _campaign_page(key: str, *, placement_form: PlacementFields | None = None,
                   items_form: CampaignItemsForm | None = None, error: str = "",
                   status: int = 200) -> Response:
    from hub import get_db
    from hub.content_api import funnel_range

    lib = library()
    campaign = lib.get_campaign(path_key(key, "campaign"))
    if placement_form is None:
        placement_form = PlacementFields(formdata=None)
        placement_form.fill(campaign)
    if items_form is None:
        items_form = CampaignItemsForm(formdata=None, items=", ".join(campaign["items"]))
    try:
        since, until = funnel_range(request.args)
    except ContentError as exc:
        today = int(time.time() // 86400)
        since, until, error = today - 29, today, error or str(exc)
        status = 400 if status == 200 else status
    funnel = get_db().funnel(campaign["items"], since, until)
    return _page("campaign.html", status, campaign=campaign, placement_form=placement_form,
                 items_form=items_form, action_form=ActionForm(), error=error,
                 funnel=funnel, charts=_charts(funnel))


@bp.get("/campaigns/<key>")
@requires("content:read")
def campaign(key: str) -> ResponseReturnValue:
    try:
        return _campaign_page(key)
    except ContentError as exc:
        return _campaigns_page(error=str(exc), status=exc.status)


@bp.post("/campaigns/<key>/placement")
@requires("content:write")
def place_campaign(key: str) -> ResponseReturnValue:
    form = PlacementFields()
    try:
        if not form.validate_on_submit():
            return _campaign_page(key, placement_form=form, error=_form_errors(form),
                                  status=400)
        library().place_campaign(_actor(), path_key(key, "campaign"), targets=form.targets(),
                                 schedule=form.schedule())
    except ContentError as exc:
        if exc.status == 404:
            return _campaigns_page(error=str(exc), status=404)
        return _campaign_page(key, placement_form=form, error=str(exc), status=exc.status)
    flash(f"campaign {key}: where and when saved", "ok")
    return redirect(url_for("content_pages.campaign", key=key), 303)


@bp.post("/campaigns/<key>/items")
@requires("content:write")
def set_campaign_items(key: str) -> ResponseReturnValue:
    form = CampaignItemsForm()
    try:
        if not form.validate_on_submit():
            return _campaign_page(key, items_form=form, error=_form_errors(form), status=400)
    except ContentError as exc:  # no such campaign
        return _campaigns_page(error=str(exc), status=exc.status)
    try:
        library().set_campaign_items(_actor(), key, _names(form.items.data))
    except ContentError as exc:
        return _campaign_page(key, items_form=form, error=str(exc), status=exc.status)
    flash(f"campaign {key}: items saved", "ok")
    return redirect(url_for("content_pages.campaign", key=key), 303)


@bp.post("/campaigns/<key>/retire")
@requires("content:write")
def retire_campaign(key: str) -> ResponseReturnValue:
    try:
        library().retire_campaign(_actor(), path_key(key, "campaign"))
    except ContentError as exc:
        flash(str(exc), "error")
        return redirect(url_for("content_pages.campaigns"), 303)
    flash(f"campaign {key} retired: its items reach no node any more", "ok")
    return redirect(url_for("content_pages.campaign", key=key), 303)
