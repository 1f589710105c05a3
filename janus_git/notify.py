"""apprise delivery: alerts and the daily summary reach people through notifications.urls."""
from __future__ import annotations

from .state import StateRepo


def _apprise(urls: list[str]):
    import apprise
    ap = apprise.Apprise()
    for url in urls:
        ap.add(url)
    return ap


def send(urls: list[str], title: str, body: str) -> tuple[int, int]:
    """Deliver to each URL with a fresh instance (apprise's mail plugin otherwise waits 5.5 s
    between sends on one instance); returns (delivered, total).  apprise never raises."""
    ok = 0
    for url in urls:
        if _apprise([url]).notify(title=title, body=body):
            ok += 1
    return ok, len(urls)


def send_test(sr: StateRepo) -> tuple[int, int]:
    urls = sr.config["notifications"]["urls"]
    return send(urls, "janus-git: test", f"Test notification from the state repository {sr.root}.")
