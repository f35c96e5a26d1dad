"""Drivers feed the residency manager: a real forward pass or a replay of the schedule."""
