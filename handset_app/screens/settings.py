"""Settings: the customer's own rules, kept on the phone and enforced there (consent per
kind of content and per merchant, quiet hours, a daily cap of unrequested items), and
the identity: reset the pseudonymous identity, delete everything this app keeps."""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any

from kivy.metrics import dp
from kivy.properties import StringProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.checkbox import CheckBox
from kivy.uix.label import Label

from handset_app.screens.base import AppScreen

log = logging.getLogger(__name__)

CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
KIND_LABELS = {"article": "Articles", "coupon": "Coupons", "media": "Images, audio, video",
               "ticket": "E-tickets", "goods": "Digital goods"}
CONFIRM = " (press again to confirm)"


def _row(text: str, active: bool) -> tuple[BoxLayout, CheckBox]:
    row = BoxLayout(size_hint_y=None, height=dp(36))
    label = Label(text=text, halign="left", valign="middle")
    label.bind(size=lambda widget, size: setattr(widget, "text_size", size))
    box = CheckBox(active=active, size_hint_x=None, width=dp(48))
    row.add_widget(label)
    row.add_widget(box)
    return row, box


class SettingsScreen(AppScreen):
    identity = StringProperty("")
    reset_label = StringProperty("Reset my pseudonymous identity")
    delete_label = StringProperty("Delete all local data")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.kind_boxes: dict[str, CheckBox] = {}
        self.merchant_boxes: dict[str, CheckBox] = {}

    def refresh(self) -> None:
        phone = self.tapcast.phone
        consent = phone.consent()
        self.kind_boxes.clear()
        self.ids.kinds.clear_widgets()
        for kind, allowed in consent.kinds.items():
            row, box = _row(KIND_LABELS.get(kind, kind), allowed)
            self.kind_boxes[kind] = box
            self.ids.kinds.add_widget(row)
        merchants = {e.merchant for e in phone.inbox() if e.merchant} | set(consent.blocked_merchants)
        self.merchant_boxes.clear()
        self.ids.merchants.clear_widgets()
        for merchant in sorted(merchants):
            row, box = _row(f"{merchant} may send", merchant not in consent.blocked_merchants)
            self.merchant_boxes[merchant] = box
            self.ids.merchants.add_widget(row)
        self.ids.quiet_start.text = consent.quiet_start or ""
        self.ids.quiet_end.text = consent.quiet_end or ""
        self.ids.daily_cap.text = "" if consent.daily_cap is None else str(consent.daily_cap)
        creds = phone.credentials
        self.identity = (f"Pseudonymous id {creds.handset_id}" if creds is not None
                         else "No identity: sign in to get one.")
        self.reset_label = "Reset my pseudonymous identity"
        self.delete_label = "Delete all local data"

    def block_merchant(self) -> None:
        name = self.ids.block_merchant.text.strip()
        if not name:
            return
        row, box = _row(f"{name} may send", False)
        if name in self.merchant_boxes:
            self.merchant_boxes[name].active = False
        else:
            self.merchant_boxes[name] = box
            self.ids.merchants.add_widget(row)
        self.ids.block_merchant.text = ""

    def save(self) -> None:
        app = self.tapcast
        start, end = self.ids.quiet_start.text.strip(), self.ids.quiet_end.text.strip()
        if bool(start) != bool(end) or any(t and not CLOCK.match(t) for t in (start, end)):
            app.report_error("quiet hours: give both times as HH:MM (e.g. 22:00 and 07:00), "
                             "or neither")
            return
        cap_text = self.ids.daily_cap.text.strip()
        if cap_text and not cap_text.isdigit():
            app.report_error("the daily cap is a whole number of items (or empty: no cap)")
            return
        consent = dataclasses.replace(
            app.phone.consent(),
            kinds={kind: box.active for kind, box in self.kind_boxes.items()},
            blocked_merchants={m for m, box in self.merchant_boxes.items() if not box.active},
            quiet_start=start or None, quiet_end=end or None,
            daily_cap=int(cap_text) if cap_text else None)
        try:
            app.phone.set_consent(consent)
        except ValueError as exc:
            app.report_error(f"rules not saved: {exc}")
            return
        app.report("rules saved: they hold from the next item on")

    def reset_identity(self) -> None:
        if not self.reset_label.endswith(CONFIRM):
            self.reset_label += CONFIRM
            return
        self.tapcast.reset_identity()

    def delete_data(self) -> None:
        if not self.delete_label.endswith(CONFIRM):
            self.delete_label += CONFIRM
            return
        self.tapcast.delete_local_data()
