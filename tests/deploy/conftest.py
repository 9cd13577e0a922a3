"""Deployment tests: the Dockerfile (without docker), the README's set-up command, the installed package."""

from __future__ import annotations


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "deploy: deployment checks (fresh virtualenv, real gunicorn on a loopback port, built wheel); "
        "part of the default run, select or skip with -m deploy / -m 'not deploy'",
    )
