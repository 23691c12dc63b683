"""A user at the IdP's login and consent pages, without a browser.

login(authorize_url, username) follows the authorization request to the
interaction pages of the test IdP (oidc-provider's development forms), signs
in as `username` (any password), consents (or declines), and returns the
redirect URL the IdP sends the user agent to: the client's redirect_uri with
`code` and `state` (or `error`). That last redirect is not followed.
"""

import html
import re
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # 3xx responses surface as HTTPError; login() follows them itself


def login(authorize_url, username, consent=True, password="any", max_steps=20):
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()), _NoRedirect)
    idp = urllib.parse.urlsplit(authorize_url)[:2]
    url, form = authorize_url, None
    for _ in range(max_steps):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=10) as resp:
                page = resp.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            if e.code not in (301, 302, 303, 307, 308):
                raise AssertionError(f"{url}: HTTP {e.code}: {e.read().decode(errors='replace')[:500]}") from None
            url, form = urllib.parse.urljoin(url, e.headers["location"]), None
            if urllib.parse.urlsplit(url)[:2] != idp:
                return url  # leaving the IdP: the client's redirect_uri
            continue
        url, form = _next_form(url, page, username, password, consent)
    raise AssertionError(f"no redirect back to the client after {max_steps} steps")


def _next_form(url, page, username, password, consent):
    """The form the user would submit on `page`: (action URL, fields)."""
    prompt = re.search(r'name="prompt" value="([^"]+)"', page)
    action = re.search(r'<form[^>]*action="([^"]+)"', page)
    if not prompt or not action:
        raise AssertionError(f"{url}: not a login or consent page:\n{page[:1000]}")
    target = urllib.parse.urljoin(url, html.unescape(action.group(1)))
    if prompt.group(1) == "login":
        return target, {"prompt": "login", "login": username, "password": password}
    if prompt.group(1) == "consent":
        if consent:
            return target, {"prompt": "consent"}
        cancel = re.search(r'<a href="([^"]+)">\[ Cancel \]</a>', page)
        if not cancel:
            raise AssertionError(f"{url}: no Cancel link on the consent page")
        return urllib.parse.urljoin(url, html.unescape(cancel.group(1))), None
    raise AssertionError(f"{url}: unexpected prompt {prompt.group(1)!r}")
