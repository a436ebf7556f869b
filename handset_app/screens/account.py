"""Sign in or register with the hub. The hub signs this phone's pseudonymous handset
certificate; the key it certifies is made on the phone and never leaves it (the hub
client sends only the public key)."""
from __future__ import annotations

from kivy.properties import StringProperty

from handset_app.screens.base import AppScreen


class SignInScreen(AppScreen):
    who = StringProperty("")

    def refresh(self) -> None:
        app = self.tapcast
        if not self.ids.hub_url.text and app.hub_url:
            self.ids.hub_url.text = app.hub_url
        creds = app.phone.credentials
        self.who = (f"This phone is {creds.handset_id} (signed in)." if creds is not None
                    else "Not signed in: sign in or register to receive content.")

    def submit(self, *, register: bool) -> None:
        self.tapcast.start_sign_in(self.ids.hub_url.text.strip(), self.ids.username.text.strip(),
                                   self.ids.password.text, register=register)
