"""Guest-side code: the agent and the libraries guest-side case functions use (stdlib only)."""
