"""Account pages: one's own API tokens, the users (admins), the audit log (admins and
auditors), and the home page of a role that may not see the operator page.

Plain forms (Flask-WTF, CSRF-checked by the gate in hub/auth.py) posting back to the
server, so they work without JavaScript; every change goes through hub/accounts.py and
is audited with ``via = "web"``. A new token's value is shown once, in the answer to the
form that made it (never in an address or a redirect).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from flask import (Blueprint, Response, flash, redirect, render_template, request,
                   url_for)
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from wtforms import (BooleanField, IntegerField, PasswordField, SelectField,
                     SelectMultipleField, StringField, widgets)
from wtforms.validators import InputRequired, Length, NumberRange, Optional

from hub.accounts import (MAX_PASSWORD_LEN, PERMISSIONS, ROLE_PERMISSIONS, ROLES,
                          AccountError)
from hub.accounts_api import audit_page, audit_query
from hub.auth import Principal, accounts, current_principal, requires

log = logging.getLogger(__name__)

bp = Blueprint("accounts_pages", __name__)

DAY = 86400.0


class NewTokenForm(FlaskForm):
    name = StringField("Name", validators=[InputRequired(), Length(max=64)])
    scopes = SelectMultipleField("Scopes", choices=[],
                                 widget=widgets.ListWidget(prefix_label=False),
                                 option_widget=widgets.CheckboxInput())
    days = IntegerField("Expires after (days, empty: never)",
                        validators=[Optional(), NumberRange(min=1, max=3650)])


class ActionForm(FlaskForm):
    """Only the CSRF token: a button that changes something."""


class NewUserForm(FlaskForm):
    username = StringField("User name", validators=[InputRequired(), Length(max=64)])
    role = SelectField("Role", choices=list(ROLES))
    password = PasswordField("Password", validators=[Optional(),
                                                     Length(max=MAX_PASSWORD_LEN)])
    display_name = StringField("Display name", validators=[Optional(), Length(max=128)])


class UserChangeForm(FlaskForm):
    role = SelectField("Role", choices=list(ROLES))
    disabled = BooleanField("Disabled")


def _me() -> Principal:
    principal = current_principal()
    assert isinstance(principal, Principal)
    return principal


def _no_store(html: str, status: int = 200) -> Response:
    response = Response(html, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def home_page() -> ResponseReturnValue:
    """``/`` for a role that may not see the fleet: who is signed in, what the role may
    do, and where to do it."""
    return _no_store(render_template("home.html", permissions=PERMISSIONS))


# ------------------------------------------------------------------ tokens


def _token_form() -> NewTokenForm:
    form = NewTokenForm()
    form.scopes.choices = [(p, f"{p}: {PERMISSIONS[p]}") for p in sorted(_me().permissions)]
    return form


def _account_page(form: NewTokenForm, new_token: str | None = None, error: str = "",
                  status: int = 200) -> Response:
    principal = _me()
    return _no_store(render_template(
        "account.html", form=form, new_token=new_token, error=error,
        tokens=accounts().list_tokens(principal.user.username), action_form=ActionForm(),
        permissions=PERMISSIONS), status)


@bp.get("/account")
@requires("tokens:own")
def account() -> ResponseReturnValue:
    return _account_page(_token_form())


@bp.post("/account/tokens")
@requires("tokens:own")
def create_token() -> ResponseReturnValue:
    form = _token_form()
    if not form.validate_on_submit():
        errors = "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items())
        return _account_page(form, error=errors, status=400)
    principal = _me()
    expires = None
    if form.days.data:
        expires = time.time() + form.days.data * DAY
    try:
        _, value = accounts().create_token(principal.actor(), principal.user.username,
                                           form.name.data.strip(), form.scopes.data or [],
                                           expires_at=expires)
    except AccountError as exc:
        return _account_page(form, error=str(exc), status=exc.status)
    return _account_page(_token_form(), new_token=value, status=201)


@bp.post("/account/tokens/<token_id>/revoke")
@requires("tokens:own")
def revoke_token(token_id: str) -> ResponseReturnValue:
    principal = _me()
    try:
        accounts().revoke_token(principal.actor(), token_id[:64], owner=principal.user.username)
    except AccountError as exc:
        flash(str(exc), "error")
    return redirect(url_for("accounts_pages.account"), 303)


# ------------------------------------------------------------------- users


def _users_page(form: NewUserForm | None = None, error: str = "", status: int = 200) -> Response:
    return _no_store(render_template(
        "users.html", users=accounts().list_users(), form=form or NewUserForm(),
        change_form=UserChangeForm, roles=ROLES, role_permissions=ROLE_PERMISSIONS,
        error=error), status)


@bp.get("/users")
@requires("users:admin")
def users() -> ResponseReturnValue:
    return _users_page()


@bp.post("/users")
@requires("users:admin")
def create_user() -> ResponseReturnValue:
    form = NewUserForm()
    if not form.validate_on_submit():
        errors = "; ".join(f"{k}: {', '.join(v)}" for k, v in form.errors.items())
        return _users_page(form, errors, 400)
    try:
        user = accounts().create_user(_me().actor(), form.username.data.strip(),
                                      form.role.data, password=form.password.data or None,
                                      display_name=form.display_name.data or None)
    except AccountError as exc:
        return _users_page(form, str(exc), exc.status)
    flash(f"user {user.username} ({user.role}) created", "ok")
    return redirect(url_for("accounts_pages.users"), 303)


@bp.post("/users/<username>")
@requires("users:admin")
def update_user(username: str) -> ResponseReturnValue:
    form = UserChangeForm()
    if not form.validate_on_submit():
        return _users_page(error="; ".join(f"{k}: {', '.join(v)}"
                                           for k, v in form.errors.items()), status=400)
    try:
        user = accounts().update_user(_me().actor(), username[:64], role=form.role.data,
                                      disabled=bool(form.disabled.data))
    except AccountError as exc:
        return _users_page(error=str(exc), status=exc.status)
    flash(f"user {user.username}: {user.role}{', disabled' if user.disabled else ''}", "ok")
    return redirect(url_for("accounts_pages.users"), 303)


# ------------------------------------------------------------------- audit


@bp.get("/audit")
@requires("audit:read")
def audit() -> ResponseReturnValue:
    try:
        query = audit_query(request.args)
    except AccountError as exc:
        return _no_store(render_template("audit.html", entries=[], next_cursor=None,
                                         error=str(exc), args={}), 400)
    entries, next_cursor = audit_page(query)
    args: dict[str, Any] = {k: v for k, v in request.args.items()
                            if k in ("action", "actor", "limit")}
    return _no_store(render_template("audit.html", entries=entries, next_cursor=next_cursor,
                                     error="", args=args))
