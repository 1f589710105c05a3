"""Text that anyone who can push wrote, made inert before it goes into a chat message.

A proposal's args, rationale, note, mission and id, a STOP file's reason, a tool_use.jsonl
line: the daemon quotes them in alerts, approval requests and the daily summary, and a chat
client acts on some of what they can hold.  A mention pages people (`@channel`, `@here`,
`@everyone`, Matrix's `@room`, Slack's `<!channel>` and `<@U123>`); a link shows one thing
and opens another (`[text](http://evil)`, Slack's `<http://evil|click>`, a bare URL the
client turns into a link).  apprise's Slack plugin turns `!channel>` and `http://x|y>` into
Slack's syntax even without the `<`, and its Markdown converter makes `[text](url)` a link.
So, in the pushed text only:

- `@` gets a zero-width space after it: it reads the same and mentions no one;
- `<` and `>` become `‹` and `›`: no Slack control sequence, no autolink, no HTML;
- `](`, `][` and `]:` get a zero-width space inside: no Markdown link, image or reference;
- `scheme://` becomes `scheme[:]//` (and `http` `hxxp`, `www.` `www[.]`), the usual way to
  show an address without making it one.

The agent's own text around it (code spans, bold, the commands to run) stays as written.
inert() of inert text changes nothing, so a message made of inert parts can be passed
through it again (Notifier.post does, for posts composed outside notify.py).
"""
from __future__ import annotations

import re

ZWSP = "\u200b"
_AT = re.compile("@(?!\u200b)")
_BRACKET = re.compile(r"\](?=[(\[:])")
_SCHEME = re.compile(r"\b([a-z][a-z0-9+.-]*)://", re.I)
_WWW = re.compile(r"\b(www)\.", re.I)
_ANGLE = str.maketrans({"<": "‹", ">": "›"})


def _defang(m: re.Match) -> str:
    scheme = m.group(1)
    if scheme.lower() in ("http", "https"):  # hxxp(s), as threat reports write it
        scheme = scheme[0] + "xx" + scheme[3:]
    return f"{scheme}[:]//"


def inert(text: object) -> str:
    """TEXT (anything: it is made a string) as a chat shows it, mentioning and linking
    nothing."""
    s = str(text).translate(_ANGLE)
    s = _AT.sub("@" + ZWSP, s)
    s = _BRACKET.sub("]" + ZWSP, s)
    s = _SCHEME.sub(_defang, s)
    return _WWW.sub(r"\1[.]", s)
