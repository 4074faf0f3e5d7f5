"""Pieces shared by the agent, the relay and the sender."""
