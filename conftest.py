"""Repo-local pytest set-up: the massact plugin comes from the installed package's entry point."""
pytest_plugins = ["pytester"]
