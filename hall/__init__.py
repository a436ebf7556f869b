"""The composition: what wires the parts into a running system.

The virtual hall (simulated NFC and BLE air, nodes and handsets on one machine), the
demo, the ``tapcast`` command's wiring, the embedded demo broker and test helpers. It
stands above the parts: it imports ``node``, ``hub`` and ``handset_app`` (lazily, so a Pi
with only the node extra never imports Flask), and nothing imports it but tests and
benchmarks. The rule is enforced by import-linter contracts in pyproject.toml.
"""
