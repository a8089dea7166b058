"""The web console, JSON API and ``/metrics``: thin over worker/lifecycle."""
