"""Places: where and when this phone tapped (or presented a display's code), from the
phone's own history, offline."""
from __future__ import annotations

from kivy.factory import Factory

from handset_app.screens.base import AppScreen, when


class PlacesScreen(AppScreen):
    def refresh(self) -> None:
        rows = self.ids.rows
        rows.clear_widgets()
        places = self.tapcast.phone.places()
        if not places:
            rows.add_widget(Factory.WrapLabel(text="No taps yet."))
        for place in places:
            how = "tap" if place.channel == "nfc" else "code"
            rows.add_widget(Factory.WrapLabel(
                text=f"{when(place.at)}  {place.zone or '?'} (node {place.node_id}, {how}): "
                     f"{place.items} item(s)"))
