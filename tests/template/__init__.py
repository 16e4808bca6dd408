"""Checks on template.yaml, samconfig.toml and env.json, and the sam build architecture check."""
