"""Paying a sandbox checkout the way a browser does: load the page, submit its pay form."""

from __future__ import annotations

import html
import re
from urllib.parse import urlencode, urljoin

import httpx

_FORM = re.compile(r"<form[^>]*method=\"post\"[^>]*action=\"([^\"]+)\"[^>]*>(.*?)</form>", re.S)
_BUTTON = re.compile(r"<button[^>]*name=\"([^\"]+)\"[^>]*value=\"([^\"]+)\"")


def submit_checkout(checkout_url: str, choice: str = "pay") -> httpx.Response:
    """Loads the sandbox checkout page, finds the form with the ``choice`` button (``pay`` or
    ``decline``) and posts it as a browser would (form-encoded, the button's name and value);
    follows the 303 back to the page and returns that page."""
    with httpx.Client(follow_redirects=False, timeout=10) as browser:
        page = browser.get(checkout_url)
        assert page.status_code == 200, page.text
        for action, inner in _FORM.findall(page.text):
            for name, value in _BUTTON.findall(inner):
                if value == choice:
                    target = urljoin(checkout_url, html.unescape(action))
                    answer = browser.post(
                        target,
                        content=urlencode({name: value}),
                        headers={"Content-Type": "application/x-www-form-urlencoded"},
                    )
                    assert answer.status_code == 303, answer.text
                    return browser.get(urljoin(target, answer.headers["location"]))
    raise AssertionError(f"no form with a {choice!r} button on {checkout_url}: {page.text[:2000]}")
