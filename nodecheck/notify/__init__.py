"""Telling people: alerts to an Alertmanager (API v2) when the quarantine loop gives up on
a node, and the matching resolved alert when it returns."""
