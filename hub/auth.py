"""Who is asking, and may they: sign-in, sessions, bearer tokens, and the access rule
of every page and endpoint.

* Every view has exactly one access rule: ``@public``, ``@signed_in`` or
  ``@requires("perm", ...)`` (permissions of hub/accounts.py's ROLE_PERMISSIONS), and
  Flask's own ``static`` is public by name (``PUBLIC_ENDPOINTS``). One ``before_request``
  enforces them for the whole app; a view without a rule is refused (403, logged as an
  error), and tests/test_hub_roles.py fails on it.
* A request is someone when it carries ``Authorization: Bearer <token>`` (a personal API
  token: the owner's role's permissions cut down to the token's scopes) or the page's
  session (Flask-Login; the role's permissions). Either is re-read from the database on
  every request: a disabled user, a demoted role or a revoked token counts at once.
  When the header is present it alone decides, even beside a session cookie.
* CSRF (Flask-WTF): every state-changing request is checked, unless it is authenticated
  by a bearer token (which a foreign page cannot send): page forms carry the token in a
  hidden field, the page's scripts in an ``X-CSRFToken`` header.
* Sign-in is rate limited by Flask-Limiter, per remote address and per user name
  (failed attempts only). Its storage is ``[hub] ratelimit_storage``: ``memory://`` is
  per process, so with W gunicorn workers an attacker gets up to W times the limit;
  a ``redis://`` URL shares it.
* Refusals for want of a valid credential, and failed sign-ins, are counted for
  ``/api/v1/stats`` (one counter for all the workers of one ``hub web``) and logged at
  most once a minute per process, never with the token or password.
"""
from __future__ import annotations

import hmac
import logging
import multiprocessing
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import (Blueprint, Flask, Response, current_app, g, jsonify, redirect,
                   render_template, request, session, url_for)
from flask.typing import ResponseReturnValue
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_limiter.util import get_remote_address
from flask_login import (AnonymousUserMixin, LoginManager, current_user, login_user,
                         logout_user)
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError, CSRFProtect
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length

from tapcast.ratelog import RateLimitedLog

from hub.accounts import (MAX_PASSWORD_LEN, MAX_TOKEN_LEN, PERMISSIONS, Accounts, Actor,
                          Token, User)

log = logging.getLogger(__name__)

__all__ = ["init_app", "requires", "public", "signed_in", "rule_of", "Rule", "PUBLIC",
           "SIGNED_IN", "PUBLIC_ENDPOINTS", "Principal", "current_principal", "accounts",
           "auth_counts", "SignOutForm", "sign_in_page", "bp", "HOW_TO_GET_ONE", "REALM",
           "csrf_exempt", "refused", "limiter"]

REALM = "tapcast-hub"
SESSION_LIFETIME = timedelta(hours=12)
REFUSAL_LOG_INTERVAL = 60.0
#: Sign-in attempts that fail, per remote address and per user name (Flask-Limiter).
LOGIN_LIMIT = "5 per minute"
HOW_TO_GET_ONE = ("make a personal token on the hub page (My tokens), or on the hub's "
                  "box: `tapcast hub token create --config hub.toml --user NAME --name "
                  "NAME --scopes all`")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_ACCOUNTS = "tapcast.accounts"
_LIMITER = "tapcast.limiter"
_CSRF = "tapcast.csrf"

V = TypeVar("V", bound=Callable[..., Any])


# ------------------------------------------------------------------ access rules


class Rule:
    """What a view needs: nothing (public), a signed-in someone, or permissions."""

    def __init__(self, name: str, permissions: frozenset[str] = frozenset()) -> None:
        self.name = name
        self.permissions = permissions

    def __repr__(self) -> str:
        return f"Rule({self.name})"


PUBLIC = Rule("public")
SIGNED_IN = Rule("signed in")
#: Endpoints Flask makes itself, public by name (a decorator cannot reach them).
PUBLIC_ENDPOINTS = {"static": PUBLIC}
_RULE_ATTR = "_tapcast_rule"


def _mark(view: V, rule: Rule) -> V:
    if hasattr(view, _RULE_ATTR):
        raise TypeError(f"{view.__qualname__} has two access rules")
    setattr(view, _RULE_ATTR, rule)
    return view


def public(view: V) -> V:
    """Anyone, signed in or not (the sign-in form, the OpenAPI document)."""
    return _mark(view, PUBLIC)


def signed_in(view: V) -> V:
    """Anyone signed in, whatever the role (the view shows what the role may see)."""
    return _mark(view, SIGNED_IN)


def requires(*permissions: str) -> Callable[[V], V]:
    """Only someone whose role (and token, if any) has every one of ``permissions``."""
    unknown = [p for p in permissions if p not in PERMISSIONS]
    if unknown or not permissions:
        raise ValueError(f"requires{permissions}: permissions are {', '.join(PERMISSIONS)}")
    rule = Rule(" + ".join(permissions), frozenset(permissions))
    return lambda view: _mark(view, rule)


_NO_CSRF_ATTR = "_tapcast_no_csrf"


def csrf_exempt(view: V) -> V:
    """A public JSON endpoint the handset app calls with no session and no page: signing
    up or in from the app (hub/handsets_api.py). Its answer carries the credential and
    sets no cookie, so a foreign page that made a browser send it would gain nothing."""
    setattr(view, _NO_CSRF_ATTR, True)
    return view


def rule_of(app: Flask, endpoint: str) -> Rule | None:
    """The access rule of an endpoint (None: it has none, and is refused)."""
    if endpoint in PUBLIC_ENDPOINTS:
        return PUBLIC_ENDPOINTS[endpoint]
    view = app.view_functions.get(endpoint)
    return getattr(view, _RULE_ATTR, None)


# ------------------------------------------------------------------ principals


class Principal:
    """A signed-in user, through the page's session or one of their tokens."""

    is_authenticated = True
    is_anonymous = False

    def __init__(self, user: User, token: Token | None = None) -> None:
        self.user = user
        self.token = token

    @property
    def is_active(self) -> bool:
        return not self.user.disabled

    def get_id(self) -> str:
        """What the session keeps: the user's id and their password's stamp, so that
        a new password ends the sessions begun before it (User.session_stamp)."""
        return f"{self.user.id}.{self.user.session_stamp}"

    @property
    def permissions(self) -> frozenset[str]:
        """The role's permissions, cut down to the token's scopes (re-read each request)."""
        granted = self.user.permissions
        return granted if self.token is None else granted & frozenset(self.token.scopes)

    def may(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def via(self) -> str:
        return "web" if self.token is None else "api"

    def actor(self) -> Actor:
        via = "api" if request.path.startswith("/api/") else "web"
        return Actor(self.user.id, self.user.username, via, request.remote_addr)


class Anonymous(AnonymousUserMixin):
    permissions: frozenset[str] = frozenset()
    token = None
    user = None

    def may(self, permission: str) -> bool:
        return False


def current_principal() -> Principal | Anonymous:
    return current_user._get_current_object()  # type: ignore[attr-defined]


def accounts(app: Flask | None = None) -> Accounts:
    return (app or current_app).extensions[_ACCOUNTS]


def limiter(app: Flask | None = None) -> Limiter:
    """The app's Flask-Limiter (its storage is ``[hub] ratelimit_storage``)."""
    return (app or current_app).extensions[_LIMITER]


# ------------------------------------------------------------------ refusals

# Allocated when this module is first imported. `hub web` and `hub serve` build the app
# once in the gunicorn master (hub.run.check_web_app) before forking the workers, so the
# workers share these counters.
_FAILURES = multiprocessing.get_context("fork").Array("q", 2)  # auth failures, logins
_refusal_log = RateLimitedLog(log, interval=REFUSAL_LOG_INTERVAL)


def auth_counts() -> dict[str, int]:
    """For /api/v1/stats: requests refused for want of a valid credential (failed
    sign-ins included), and failed sign-ins, since this hub web started."""
    with _FAILURES.get_lock():
        return {"auth_failures": int(_FAILURES[0]), "login_failures": int(_FAILURES[1])}


def refused(reason: str, *, login: bool = False) -> None:
    """Count (and log, rate-limited) a request refused for want of a valid credential:
    a bad token, a failed sign-in, a node file request that does not verify."""
    with _FAILURES.get_lock():
        _FAILURES[0] += 1
        if login:
            _FAILURES[1] += 1
    _refusal_log.warn("refused", "refused a request without a valid credential (%s, from "
                      "%s); at most one such line per %.0f s", reason,
                      request.remote_addr or "?", REFUSAL_LOG_INTERVAL)


def _bearer() -> tuple[str | None, str]:
    """(token, "") from the Authorization header, or (None, why it is unusable)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None, "Authorization header is not 'Bearer <token>'"
    return value.strip(), ""


def _load_session_user(user_id: str) -> Principal | None:
    """Flask-Login's user loader: the session's user, unless disabled or gone. With an
    Authorization header the header alone decides (the request loader)."""
    if "Authorization" in request.headers:
        return None
    number, _, stamp = user_id.partition(".")
    try:
        user = accounts().user_by_id(int(number))
    except ValueError:
        return None
    if user is None or user.disabled:
        g.tapcast_refusal = "session of a disabled or removed account"
        return None
    if not hmac.compare_digest(stamp.encode(), user.session_stamp.encode()):
        g.tapcast_refusal = "session begun before a password change: sign in again"
        return None
    return Principal(user)


def _load_token_user(req: Any) -> Principal | None:
    """Flask-Login's request loader: the owner of a valid bearer token."""
    if "Authorization" not in req.headers:
        return None
    value, why = _bearer()
    if value is None or len(value) > MAX_TOKEN_LEN:
        g.tapcast_refusal = why or "wrong, expired or revoked token"
        return None
    found = accounts().check_token(value)
    if found is None:
        g.tapcast_refusal = "wrong, expired or revoked token"
        return None
    return Principal(*found)


def _is_api() -> bool:
    return request.path.startswith("/api/")


def _unauthenticated() -> ResponseReturnValue:
    why = g.get("tapcast_refusal") or "no credential"
    refused(why)
    if _is_api():
        challenge = f'Bearer realm="{REALM}"'
        if why != "no credential":
            challenge += ', error="invalid_token"'
        response = jsonify({"error": f"this API needs a credential ({why}): send "
                                     f"'Authorization: Bearer <token>'; {HOW_TO_GET_ONE}"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = challenge
        response.headers["Cache-Control"] = "no-store"
        return response
    if request.endpoint == "pages.index":  # the hub's address shows the form itself
        return sign_in_page()
    return redirect(url_for("auth.signin_form", next=request.full_path.rstrip("?")), 303)


def _forbidden(principal: Principal, rule: Rule) -> ResponseReturnValue:
    missing = sorted(rule.permissions - principal.permissions)
    role = principal.user.role
    if principal.token is not None and missing and all(
            p in principal.user.permissions for p in missing):
        why = f"this token's scopes do not include {', '.join(missing)}"
    else:
        why = f"role {role} may not: this needs {', '.join(missing)}"
    if _is_api():
        return jsonify({"error": f"forbidden: {why}"}), 403
    return render_template("forbidden.html", why=why, principal=principal,
                           permissions=PERMISSIONS), 403


def check_access() -> ResponseReturnValue | None:
    """The one gate every request passes (before_request): the endpoint's rule, the
    credential, CSRF for state changes."""
    endpoint = request.endpoint
    if endpoint is None:  # no route (404/405): nothing to protect, Flask answers
        return None
    rule = rule_of(current_app, endpoint)
    if rule is None:
        log.error("endpoint %r has no access rule (@public, @signed_in or @requires): "
                  "refused", endpoint)
        if _is_api():
            return jsonify({"error": "forbidden: this endpoint has no access rule"}), 403
        return Response("This page has no access rule.", 403, mimetype="text/plain")
    principal = current_principal()
    if rule is not PUBLIC and not principal.is_authenticated:
        return _unauthenticated()
    if request.method not in SAFE_METHODS and principal.token is None and not getattr(
            current_app.view_functions.get(endpoint), _NO_CSRF_ATTR, False):
        current_app.extensions[_CSRF].protect()  # a CSRFError is a 400
    if rule.permissions and not rule.permissions <= principal.permissions:
        assert isinstance(principal, Principal)
        return _forbidden(principal, rule)
    return None


# ------------------------------------------------------------------ sign-in page

bp = Blueprint("auth", __name__)


class SignInForm(FlaskForm):
    username = StringField("User name", validators=[InputRequired(), Length(max=64)])
    password = PasswordField("Password", validators=[InputRequired(),
                                                     Length(max=MAX_PASSWORD_LEN)])


class SignOutForm(FlaskForm):
    """Only the CSRF token: signing out is a POST a foreign page cannot make."""


def _next_url() -> str:
    """Where to go after signing in: a path on this hub only (never another site)."""
    target = request.args.get("next") or ""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target \
            and len(target) <= 512:
        return target
    return url_for("pages.index")


def sign_in_page(form: SignInForm | None = None, error: str = "",
                 status: int = 200) -> ResponseReturnValue:
    """The sign-in form (what ``/`` shows without a session)."""
    response = Response(render_template("signin.html", form=form or SignInForm(),
                                        error=error, next=request.args.get("next", "")),
                        status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/signin")
@public
def signin_form() -> ResponseReturnValue:
    if current_principal().is_authenticated:
        return redirect(_next_url(), 303)
    return sign_in_page()


@bp.post("/signin")
@public
def signin() -> ResponseReturnValue:
    form = SignInForm()
    if not form.validate_on_submit():
        return sign_in_page(form, "Give a user name and a password.", 400)
    username = form.username.data.strip()
    user = accounts().authenticate(username, form.password.data)
    if user is None:
        g.tapcast_login_failed = True
        refused("wrong user name or password at sign-in", login=True)
        return sign_in_page(SignInForm(formdata=None, username=username),
                            "Wrong user name or password.", 401)
    session.clear()
    login_user(Principal(user))
    session.permanent = True
    log.info("%s (%s) signed in from %s", user.username, user.role, request.remote_addr)
    return redirect(_next_url(), 303)


@bp.post("/signout")
@signed_in
def signout() -> ResponseReturnValue:
    logout_user()
    session.clear()
    return redirect(url_for("pages.index"), 303)


def _login_failed(response: Response) -> bool:
    """Only failed sign-ins use up the limit (a person who signs in is not punished)."""
    return bool(g.get("tapcast_login_failed"))


def _username_key() -> str:
    return "user:" + (request.form.get("username") or "").strip().lower()[:64]


def _too_many(exc: RateLimitExceeded) -> ResponseReturnValue:
    _refusal_log.warn("rate-limited", "sign-in attempts from %s rate limited (%s)",
                      request.remote_addr or "?", exc.description)
    if _is_api():
        return jsonify({"error": f"too many requests: {exc.description}"}), 429
    response = sign_in_page(SignInForm(formdata=None), "Too many failed sign-ins: wait a "
                            "minute, then try again.", 429)
    assert isinstance(response, Response)
    response.headers["Retry-After"] = "60"
    return response


def _csrf_refused(exc: CSRFError) -> ResponseReturnValue:
    reason = exc.description
    if _is_api():
        return jsonify({"error": f"CSRF check failed ({reason}): a request made with the "
                                 "page's session must carry the X-CSRFToken header; "
                                 "scripts use a bearer token instead"}), 400
    if request.endpoint == "auth.signin":
        return sign_in_page(SignInForm(formdata=None), "The form expired or came from "
                            "another site: sign in again.", 400)
    return render_template("forbidden.html", principal=current_principal(),
                           permissions=PERMISSIONS, status=400,
                           why="The form expired or came from another site: go back, "
                               "reload the page and try again."), 400


# ------------------------------------------------------------------ wiring


def init_app(app: Flask) -> None:
    """Accounts over the app's database, the shared session key, Flask-Login,
    CSRF, the sign-in rate limit, and the one access gate."""
    from hub import get_db

    hub = app.config["TAPCAST"].hub
    store = Accounts(get_db(app).engine)
    app.extensions[_ACCOUNTS] = store
    app.secret_key = store.shared_secret()
    app.config.update(SESSION_COOKIE_NAME="tapcast_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", PERMANENT_SESSION_LIFETIME=SESSION_LIFETIME,
                      # The gate calls csrf.protect() itself (bearer requests are exempt).
                      WTF_CSRF_CHECK_DEFAULT=False, WTF_CSRF_TIME_LIMIT=None,
                      RATELIMIT_HEADERS_ENABLED=True)

    manager = LoginManager()
    manager.user_loader(_load_session_user)
    manager.request_loader(_load_token_user)
    manager.anonymous_user = Anonymous
    manager.init_app(app)
    app.extensions[_CSRF] = CSRFProtect(app)

    limiter = Limiter(get_remote_address, app=app, storage_uri=hub.ratelimit_storage,
                      strategy="moving-window")
    app.extensions[_LIMITER] = limiter
    app.register_blueprint(bp)
    # Per app (each has its own limiter and storage); functools.wraps keeps the rule.
    app.view_functions["auth.signin"] = limiter.limit(LOGIN_LIMIT, deduct_when=_login_failed)(
        limiter.limit(LOGIN_LIMIT, key_func=_username_key, deduct_when=_login_failed)(signin))

    app.before_request(check_access)
    app.register_error_handler(RateLimitExceeded, _too_many)
    app.register_error_handler(CSRFError, _csrf_refused)

    @app.context_processor
    def account_context() -> dict[str, Any]:
        return {"principal": current_principal(), "signout_form": SignOutForm,
                "now_ts": time.time()}

