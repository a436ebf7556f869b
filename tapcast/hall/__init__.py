"""The virtual hall: simulated radios and the machinery that runs nodes and handsets on one machine."""
