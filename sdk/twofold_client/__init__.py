"""twofold client SDK (placeholder until the SDK lands)."""
